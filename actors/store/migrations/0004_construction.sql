-- The construction analyzer's results: one row per analysis, the result as its verb
-- answered it (bytea: a model's text may hold what Postgres refuses in text or jsonb).
-- The same input again (kind and input hash) is answered from the latest row.

CREATE TABLE construction_analyses (
    analysis_id  text        PRIMARY KEY,
    kind         text        NOT NULL,
    project_id   text,
    input_hash   text        NOT NULL,
    output       bytea       NOT NULL,
    text         text        NOT NULL DEFAULT '',
    model        text        NOT NULL DEFAULT '',
    duration_ms  double precision NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX construction_analyses_input ON construction_analyses (kind, input_hash, created_at DESC);
CREATE INDEX construction_analyses_created_at ON construction_analyses (created_at);
