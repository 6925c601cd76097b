-- Events a consumer of the event stream set aside: unreadable, or refused by Postgres.
-- The payload is bytea, exactly as it came: it may be what Postgres refused as text.
-- (consumer, stream_seq) makes an event set aside twice (redelivered after a crash) one row.

CREATE TABLE dead_letters (
    id         bigserial   PRIMARY KEY,
    consumer   text        NOT NULL,
    stream_seq bigint      NOT NULL,
    subject    text        NOT NULL,
    payload    bytea       NOT NULL,
    reason     text        NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, stream_seq)
);
CREATE INDEX dead_letters_at ON dead_letters (at);
