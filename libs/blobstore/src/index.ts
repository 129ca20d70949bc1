/** @shoal/blobstore: the object gateway, on a local directory or an S3 bucket. */
export {
  MAX_META_BYTES,
  type BlobStat,
  type BlobStore,
  type ByteRange,
  type ManagedBlobStore,
  type StoredBlob,
} from './blob-store.js';
export {
  blobStoreConfig,
  blobStoreConfigProblems,
  createBlobStore,
  type BlobStoreConfig,
} from './config.js';
export {
  BLOB_STORE_ERROR_STATUS,
  BlobNotFoundError,
  BlobStoreError,
  isBlobStoreError,
  type BlobStoreErrorCode,
} from './errors.js';
export { FsBlobStore } from './fs-blob-store.js';
export {
  DEFAULT_PART_SIZE_BYTES,
  MAX_PART_SIZE_BYTES,
  MIN_PART_SIZE_BYTES,
  S3BlobStore,
  type S3BlobStoreOptions,
} from './s3-blob-store.js';
export { createS3Client, type S3ClientSettings } from './s3-client.js';
