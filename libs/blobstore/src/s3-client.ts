/**
 * An S3 client set up for the gateways Shoal is run against: AWS S3, MinIO, Ceph RGW, COS.
 */
import { S3Client } from '@aws-sdk/client-s3';

import { BlobStoreError } from './errors.js';

export interface S3ClientSettings {
  /** Endpoint URL, e.g. `http://minio:9000`; unset for AWS S3 itself. */
  readonly endpoint?: string | undefined;
  /** Region, e.g. `us-east-1` (MinIO and RGW accept any; COS wants its own, e.g. `ap-guangzhou`). */
  readonly region: string;
  /** Static credentials; when both are unset the default AWS credential chain is used. */
  readonly accessKeyId?: string | undefined;
  readonly secretAccessKey?: string | undefined;
  /** Path-style URLs (`endpoint/bucket/key`), which MinIO and RGW without wildcard DNS need. */
  readonly forcePathStyle: boolean;
  /** How long connecting may take, in ms. Default 5000. */
  readonly connectTimeoutMs?: number;
  /** How long a connection may stay silent mid-request or mid-download, in ms. Default 30000. */
  readonly idleTimeoutMs?: number;
  /** Connections kept per client. Default 64. */
  readonly maxSockets?: number;
}

/**
 * Builds the client. Timeouts here guard the connection; `S3BlobStore` adds a deadline and
 * the caller's AbortSignal to every request.
 */
export function createS3Client(settings: S3ClientSettings): S3Client {
  const { accessKeyId, secretAccessKey } = settings;
  if ((accessKeyId === undefined) !== (secretAccessKey === undefined)) {
    throw new BlobStoreError(
      'INVALID_ARGUMENT',
      'give both accessKeyId and secretAccessKey, or neither',
    );
  }
  const agent = { keepAlive: true, maxSockets: settings.maxSockets ?? 64 };
  return new S3Client({
    region: settings.region,
    forcePathStyle: settings.forcePathStyle,
    ...(settings.endpoint === undefined
      ? {}
      : {
          endpoint: settings.endpoint,
          // Since 2025 the SDK adds CRC32 checksums (and aws-chunked bodies) to uploads by
          // default, which several S3-compatible gateways reject. Off-AWS, send checksums only
          // where the API requires them; blob content is verified by digest regardless.
          requestChecksumCalculation: 'WHEN_REQUIRED' as const,
          responseChecksumValidation: 'WHEN_REQUIRED' as const,
        }),
    ...(accessKeyId === undefined || secretAccessKey === undefined
      ? {}
      : { credentials: { accessKeyId, secretAccessKey } }),
    requestHandler: {
      connectionTimeout: settings.connectTimeoutMs ?? 5000,
      socketTimeout: settings.idleTimeoutMs ?? 30_000,
      httpAgent: agent,
      httpsAgent: agent,
    },
  });
}
