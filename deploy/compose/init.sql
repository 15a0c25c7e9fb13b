-- The table of deploy/compose/rules.yaml's status-table action.
CREATE TABLE IF NOT EXISTS device_status (
    device_id text NOT NULL,
    status    text NOT NULL,
    at        text
);
CREATE TABLE IF NOT EXISTS battery_low (
    device_id text NOT NULL,
    level     integer,
    at        text
);
