-- The first schema: prompt templates, request performance, cached answers.

CREATE TABLE ollama_prompts (
    name        text        NOT NULL,
    version     integer     NOT NULL,
    template    text        NOT NULL,
    parameters  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    description text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- One row per finished request; (request_id, at) makes a redelivered event a no-op.
CREATE TABLE ollama_performance (
    request_id    text             NOT NULL,
    at            timestamptz      NOT NULL,
    kind          text             NOT NULL,
    model         text             NOT NULL,
    host          text             NOT NULL DEFAULT '',
    outcome       text             NOT NULL,
    error_code    text,
    latency_ms    double precision NOT NULL,
    ttft_ms       double precision,
    prompt_tokens integer          NOT NULL DEFAULT 0,
    output_tokens integer          NOT NULL DEFAULT 0,
    attempt       integer          NOT NULL DEFAULT 1,
    cached        boolean          NOT NULL DEFAULT false,
    fallback_from text,
    template      text,
    UNIQUE (request_id, at)
);
CREATE INDEX ollama_performance_at ON ollama_performance (at);
CREATE INDEX ollama_performance_model_at ON ollama_performance (model, at);

CREATE TABLE ollama_cache (
    model      text        NOT NULL,
    key        text        NOT NULL,
    kind       text        NOT NULL,
    answer     bytea       NOT NULL,
    size       integer     NOT NULL,
    hits       bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (model, key)
);
CREATE INDEX ollama_cache_expires_at ON ollama_cache (expires_at);
