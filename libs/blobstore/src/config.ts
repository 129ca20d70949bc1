/**
 * The object gateway's configuration, a piece a service spreads into its own schema
 * (`...blobStoreConfig.shape`), as Kraken's components declare theirs.
 */
import { ConfigError, envBool, envInt } from '@shoal/runtime';
import { z } from 'zod';

import type { ManagedBlobStore } from './blob-store.js';
import { FsBlobStore } from './fs-blob-store.js';
import {
  DEFAULT_PART_SIZE_BYTES,
  MAX_PART_SIZE_BYTES,
  MIN_PART_SIZE_BYTES,
  S3BlobStore,
} from './s3-blob-store.js';
import { createS3Client } from './s3-client.js';

export const blobStoreConfig = z.object({
  /** Where blobs are kept: `fs` (a local directory) or `s3` (an S3 bucket). Default fs. */
  SHOAL_STORE_KIND: z.enum(['fs', 's3']).default('fs'),
  /** The directory of the `fs` store. Default /var/lib/shoal/store. */
  SHOAL_STORE_DIR: z.string().min(1).default('/var/lib/shoal/store'),
  /** S3 endpoint URL, e.g. `http://minio:9000`; unset for AWS S3. */
  SHOAL_S3_ENDPOINT: z.url({ protocol: /^https?$/, message: 'must be an http(s) URL' }).optional(),
  /** S3 region. Default us-east-1. */
  SHOAL_S3_REGION: z.string().min(1).default('us-east-1'),
  /** The bucket; required when SHOAL_STORE_KIND is s3 (see `blobStoreConfigProblems`). */
  SHOAL_S3_BUCKET: z
    .string()
    .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'must be an S3 bucket name')
    .optional(),
  /** Prepended to every key, e.g. `shoal/`. Default ''. */
  SHOAL_S3_PREFIX: z
    .string()
    .max(256)
    .refine((p) => !p.startsWith('/'), 'must not start with /')
    .default(''),
  /** Static credentials; leave both unset to use the default AWS credential chain. */
  SHOAL_S3_ACCESS_KEY_ID: z.string().min(1).optional(),
  SHOAL_S3_SECRET_ACCESS_KEY: z
    .string()
    .min(1)
    .optional()
    .describe('Secret of SHOAL_S3_ACCESS_KEY_ID; set both or neither.'),
  /** Path-style addressing (`endpoint/bucket/key`), as MinIO and RGW usually need. Default true. */
  SHOAL_S3_FORCE_PATH_STYLE: envBool(true),
  /** Part size of multipart uploads in bytes, 5 MiB to 5 GiB. Default 8 MiB. */
  SHOAL_S3_PART_SIZE_BYTES: envInt(DEFAULT_PART_SIZE_BYTES).refine(
    (n) => n >= MIN_PART_SIZE_BYTES && n <= MAX_PART_SIZE_BYTES,
    `must be between ${MIN_PART_SIZE_BYTES} and ${MAX_PART_SIZE_BYTES}`,
  ),
});

export type BlobStoreConfig = z.infer<typeof blobStoreConfig>;

/**
 * Problems between the variables, as `NAME: reason`, for `loadConfig`'s `crossProblems`
 * (a refinement would be lost when the shape is spread into a service's schema).
 */
export function blobStoreConfigProblems(env: Record<string, string | undefined>): string[] {
  const problems: string[] = [];
  if (env.SHOAL_STORE_KIND === 's3' && (env.SHOAL_S3_BUCKET ?? '') === '') {
    problems.push('SHOAL_S3_BUCKET: required when SHOAL_STORE_KIND is s3');
  }
  if (
    (env.SHOAL_S3_ACCESS_KEY_ID === undefined) !==
    (env.SHOAL_S3_SECRET_ACCESS_KEY === undefined)
  ) {
    problems.push(
      'SHOAL_S3_SECRET_ACCESS_KEY: set together with SHOAL_S3_ACCESS_KEY_ID, or leave both unset',
    );
  }
  return problems;
}

/**
 * Builds the configured store, not yet initialised (call `init()`). Throws a ConfigError when
 * the configuration is incomplete, for a caller that did not check `blobStoreConfigProblems`.
 */
export function createBlobStore(config: BlobStoreConfig): ManagedBlobStore {
  if (config.SHOAL_STORE_KIND === 'fs') {
    return new FsBlobStore(config.SHOAL_STORE_DIR);
  }
  const problems = blobStoreConfigProblems({
    SHOAL_STORE_KIND: config.SHOAL_STORE_KIND,
    SHOAL_S3_BUCKET: config.SHOAL_S3_BUCKET,
    SHOAL_S3_ACCESS_KEY_ID: config.SHOAL_S3_ACCESS_KEY_ID,
    SHOAL_S3_SECRET_ACCESS_KEY: config.SHOAL_S3_SECRET_ACCESS_KEY,
  });
  const bucket = config.SHOAL_S3_BUCKET;
  if (problems.length > 0 || bucket === undefined) {
    throw new ConfigError(problems);
  }
  const client = createS3Client({
    endpoint: config.SHOAL_S3_ENDPOINT,
    region: config.SHOAL_S3_REGION,
    accessKeyId: config.SHOAL_S3_ACCESS_KEY_ID,
    secretAccessKey: config.SHOAL_S3_SECRET_ACCESS_KEY,
    forcePathStyle: config.SHOAL_S3_FORCE_PATH_STYLE,
  });
  return new S3BlobStore({
    client,
    bucket,
    prefix: config.SHOAL_S3_PREFIX,
    partSizeBytes: config.SHOAL_S3_PART_SIZE_BYTES,
    ownsClient: true,
  });
}
