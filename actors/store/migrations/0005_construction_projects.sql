-- Construction projects: the facts reports are computed from. The project is kept as
-- its verb received it (bytea: free JSON may hold what jsonb refuses).

CREATE TABLE construction_projects (
    project_id  text        PRIMARY KEY,
    name        text        NOT NULL,
    doc         bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX construction_projects_updated_at ON construction_projects (updated_at);
