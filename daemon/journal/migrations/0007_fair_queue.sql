-- The upload queue, per dataset: the dispatcher shares the workers between datasets (a card
-- of 10,000 images does not hold back five images that arrived after it), so it asks each
-- dataset still collecting for its next due files. files_due answered "the next due files of
-- all datasets"; this index answers the same per dataset, and the earliest due of each.
CREATE INDEX files_due_dataset ON files (dataset_id, next_attempt_at, id)
    WHERE status = 'waiting' AND sha256 IS NOT NULL;
DROP INDEX files_due;
