-- Reasoning chains: one row per chain, one per step; progress is written as it goes, so
-- a coordinator that takes over a chain knows what is done.

CREATE TABLE reasoning_chains (
    chain_id    text        PRIMARY KEY,
    query       text        NOT NULL,
    language    text        NOT NULL DEFAULT 'en',
    state       text        NOT NULL,
    warnings    jsonb       NOT NULL DEFAULT '[]'::jsonb,
    answer      text,
    error       text,
    -- The message that ends the chain's stream (done or error), stored before it is
    -- sent: a coordinator taking over a chain that ended here sends it if it is missing.
    ending      bytea,
    -- The coordinator running it and when it last said so: one taking a chain over
    -- leaves it to a live owner.
    owner        text,
    heartbeat_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX reasoning_chains_created_at ON reasoning_chains (created_at);

CREATE TABLE reasoning_steps (
    chain_id      text        NOT NULL REFERENCES reasoning_chains ON DELETE CASCADE,
    step_id       text        NOT NULL,
    position      integer     NOT NULL,
    text          text        NOT NULL,
    depends_on    jsonb       NOT NULL DEFAULT '[]'::jsonb,
    kind          text        NOT NULL,
    state         text        NOT NULL,
    model         text        NOT NULL DEFAULT '',
    host          text        NOT NULL DEFAULT '',
    answer        text,
    error         text,
    prompt_tokens integer     NOT NULL DEFAULT 0,
    output_tokens integer     NOT NULL DEFAULT 0,
    started_at    timestamptz,
    finished_at   timestamptz,
    PRIMARY KEY (chain_id, step_id)
);
