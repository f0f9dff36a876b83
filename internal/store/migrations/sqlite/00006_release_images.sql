-- +goose Up
-- A release's OCI image: its manifest digest, the compressed size of its
-- layers, and the ids of the layer directories pier keeps to run it (JSON
-- array). Empty for releases made before images, or by the process runtime.
ALTER TABLE releases ADD COLUMN image_digest TEXT NOT NULL DEFAULT '';
ALTER TABLE releases ADD COLUMN image_size INTEGER NOT NULL DEFAULT 0;
ALTER TABLE releases ADD COLUMN image_lowers TEXT NOT NULL DEFAULT '[]';
-- How to run an image not laid out by pier's builders (a Dockerfile's):
-- JSON of pier.ImageRun, or empty.
ALTER TABLE releases ADD COLUMN image_run TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE releases DROP COLUMN image_run;
ALTER TABLE releases DROP COLUMN image_lowers;
ALTER TABLE releases DROP COLUMN image_size;
ALTER TABLE releases DROP COLUMN image_digest;
