-- files_dataset (dataset_id, status) is the start of files_counts (dataset_id, status, size):
-- every query it served, files_counts serves, and each status change of a file paid for
-- updating both.
DROP INDEX files_dataset;
