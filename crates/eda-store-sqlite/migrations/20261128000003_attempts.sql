-- Delivery counts of records whose positions are tracked outside this file (Kafka
-- offsets), so they survive a crash of the consumer.
CREATE TABLE IF NOT EXISTS eda_attempts (
    grp       TEXT    NOT NULL,
    topic     TEXT    NOT NULL,
    partition INTEGER NOT NULL,
    offset    INTEGER NOT NULL,
    attempts  INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition, offset)
);
