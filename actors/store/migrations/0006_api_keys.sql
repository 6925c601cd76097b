-- API keys of the HTTP gateway. A key's secret is never stored: only its SHA-256 (the
-- secret is 256 random bits, so a plain digest is enough; no salt or slow hash is
-- needed for a secret nobody chose) and its first characters, to recognise it by.

CREATE TABLE api_keys (
    key_id        text        PRIMARY KEY,
    name          text        NOT NULL,
    prefix        text        NOT NULL,
    secret_sha256 bytea       NOT NULL UNIQUE CHECK (length(secret_sha256) = 32),
    rpm           integer     CHECK (rpm > 0),
    tpm           integer     CHECK (tpm > 0),
    -- NULL: every model; else the names it may use (as given: compared canonically).
    models        text[]      CHECK (cardinality(models) > 0),
    admin         boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    -- Written by the gateways in batches (every reload), not per request.
    last_used_at  timestamptz
);
-- What every gateway reads on each reload.
CREATE INDEX api_keys_active ON api_keys (key_id) WHERE revoked_at IS NULL;
