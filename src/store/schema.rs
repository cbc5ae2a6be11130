// Written by hand to match migrations/ (diesel print-schema would need the C client).

diesel::table! {
    t_inventory (id) {
        id -> BigInt,
        sku_id -> BigInt,
        warehouse_id -> BigInt,
        available_qty -> Integer,
        reserved_qty -> Integer,
        version -> BigInt,
        created_at -> Datetime,
        updated_at -> Datetime,
        deleted -> TinyInt,
    }
}

diesel::table! {
    t_inventory_reservation (id) {
        id -> BigInt,
        #[max_length = 64]
        order_no -> Varchar,
        sku_id -> BigInt,
        warehouse_id -> BigInt,
        qty -> Integer,
        #[max_length = 20]
        status -> Varchar,
        expire_at -> Datetime,
        version -> Integer,
        #[max_length = 50]
        release_reason -> Nullable<Varchar>,
        #[max_length = 64]
        trace_id -> Nullable<Varchar>,
        created_at -> Datetime,
        updated_at -> Datetime,
        confirmed_qty -> Nullable<Integer>,
    }
}

diesel::table! {
    t_inventory_txn (id) {
        id -> BigInt,
        #[max_length = 64]
        txn_id -> Varchar,
        #[max_length = 64]
        order_no -> Nullable<Varchar>,
        sku_id -> BigInt,
        warehouse_id -> BigInt,
        delta_available -> Integer,
        delta_reserved -> Integer,
        available_after -> Integer,
        reserved_after -> Integer,
        #[max_length = 50]
        reason -> Varchar,
        #[max_length = 64]
        trace_id -> Nullable<Varchar>,
        #[max_length = 255]
        remark -> Nullable<Varchar>,
        created_at -> Datetime,
    }
}

diesel::table! {
    t_mq_consume_log (id) {
        id -> BigInt,
        #[max_length = 64]
        event_id -> Varchar,
        #[max_length = 128]
        consumer_group -> Varchar,
        #[max_length = 128]
        topic -> Varchar,
        #[max_length = 64]
        tag -> Nullable<Varchar>,
        #[max_length = 64]
        business_key -> Nullable<Varchar>,
        #[max_length = 20]
        status -> Varchar,
        result -> Nullable<Text>,
        cost_ms -> Nullable<Integer>,
        created_at -> Datetime,
        updated_at -> Datetime,
    }
}

diesel::table! {
    t_stock_threshold (sku_id, warehouse_id) {
        sku_id -> BigInt,
        warehouse_id -> BigInt,
        low_stock_threshold -> Nullable<Integer>,
        updated_at -> Datetime,
    }
}

diesel::table! {
    t_warehouse (id) {
        id -> BigInt,
        #[max_length = 32]
        code -> Varchar,
        #[max_length = 128]
        name -> Varchar,
        #[max_length = 32]
        region -> Nullable<Varchar>,
        priority -> Integer,
        enabled -> TinyInt,
        created_at -> Datetime,
        updated_at -> Datetime,
    }
}

diesel::table! {
    t_reconcile_report (id) {
        id -> BigInt,
        finished_at -> Datetime,
        #[max_length = 16]
        run_trigger -> Varchar,
        #[max_length = 128]
        instance -> Varchar,
        report -> Mediumtext,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    t_inventory,
    t_inventory_reservation,
    t_inventory_txn,
    t_mq_consume_log,
);
