-- Warehouses (the reference's extension point 3, warehouse routing). The id is chosen by
-- the operator, so that warehouse ids already used in t_inventory can be registered as
-- they are; stock of a warehouse with no row here stays usable as before (without routing).
CREATE TABLE t_warehouse (
    id         BIGINT       NOT NULL,
    code       VARCHAR(32)  NOT NULL,
    name       VARCHAR(128) NOT NULL,
    region     VARCHAR(32)  NULL,
    priority   INT          NOT NULL DEFAULT 0,
    enabled    TINYINT      NOT NULL DEFAULT 1,
    created_at DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    UNIQUE KEY uk_warehouse_code (code)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
