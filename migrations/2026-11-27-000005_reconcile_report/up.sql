-- Finished reconciliation runs, whichever instance ran them (the supervisor leader runs the
-- scheduled ones): the console's "last reports". The newest 200 are kept.
CREATE TABLE t_reconcile_report (
    id            BIGINT       NOT NULL AUTO_INCREMENT,
    finished_at   DATETIME(3)  NOT NULL,
    run_trigger   VARCHAR(16)  NOT NULL,
    instance      VARCHAR(128) NOT NULL,
    -- The report as the API answers it (differences capped at 100).
    report        MEDIUMTEXT   NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
