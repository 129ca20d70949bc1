#!/bin/sh
# Creates the bucket and the seed server's user with access to that bucket only. Every step
# is idempotent, so the Job can run again after any change.
set -eu
until mc alias set shoal "${MINIO_URL:-http://shoal-minio:9000}" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"; do
  echo "waiting for MinIO"
  sleep 2
done
mc mb --ignore-existing shoal/shoal
mc admin policy create shoal shoal-seedserver /setup/seedserver-policy.json
mc admin user add shoal "$SHOAL_S3_ACCESS_KEY_ID" "$SHOAL_S3_SECRET_ACCESS_KEY"
if ! mc admin user info shoal "$SHOAL_S3_ACCESS_KEY_ID" | grep -q shoal-seedserver; then
  mc admin policy attach shoal shoal-seedserver --user "$SHOAL_S3_ACCESS_KEY_ID"
fi
echo "bucket shoal and user $SHOAL_S3_ACCESS_KEY_ID ready"
