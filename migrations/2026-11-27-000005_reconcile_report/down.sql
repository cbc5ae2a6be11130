DROP TABLE t_reconcile_report;
