/**
 * The conformance suite on S3BlobStore against a real S3 endpoint (the test kit's), and what
 * is particular to S3: multipart uploads, Range requests, init's sweep, deadlines.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';

import {
  CreateMultipartUploadCommand,
  ListMultipartUploadsCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { startS3, type S3Server } from '@shoal/testkit';

import {
  BlobStoreError,
  createBlobStore,
  createS3Client,
  S3BlobStore,
  type S3BlobStoreOptions,
} from '../src/index.js';
import { runBlobStoreConformance } from './conformance.js';

const MiB = 1024 * 1024;

let server: S3Server | undefined;
let buckets = 0;

before(async () => {
  server = await startS3();
});

after(async () => {
  await server?.stop();
});

function s3(): S3Server {
  assert.ok(server !== undefined, 'the S3 endpoint is running');
  return server;
}

function clientFor(endpoint: S3Server): S3Client {
  return createS3Client({
    endpoint: endpoint.endpoint,
    region: endpoint.region,
    accessKeyId: endpoint.accessKeyId,
    secretAccessKey: endpoint.secretAccessKey,
    forcePathStyle: true,
  });
}

/** The multipart uploads open in a bucket, as `key uploadId`. */
async function openUploads(client: S3Client, bucket: string): Promise<string[]> {
  const page = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }), {
    abortSignal: AbortSignal.timeout(5000),
  });
  return (page.Uploads ?? []).map((u) => `${u.Key ?? ''} ${u.UploadId ?? ''}`);
}

/** A fresh bucket and a store on it with 5 MiB parts, so that 12 MiB takes three parts. */
async function makeStore(options: Partial<S3BlobStoreOptions> = {}): Promise<{
  store: S3BlobStore;
  client: S3Client;
  bucket: string;
  cleanup(): Promise<void>;
  leftovers(): Promise<string[]>;
}> {
  const endpoint = s3();
  const bucket = `conformance-${++buckets}`;
  await endpoint.createBucket(bucket);
  const client = clientFor(endpoint);
  const store = new S3BlobStore({
    client,
    bucket,
    prefix: 'shoal/',
    partSizeBytes: 5 * MiB,
    ...options,
  });
  return {
    store,
    client,
    bucket,
    cleanup: async () => {
      client.destroy();
      await store.close();
    },
    leftovers: () => openUploads(client, bucket),
  };
}

/** The S3 operation of an object request, from its method and query. */
function operation(method: string, query: string): string {
  const params = new URLSearchParams(query);
  const part = params.get('partNumber');
  if (method === 'POST') {
    return params.has('uploads') ? 'CreateMultipartUpload' : 'CompleteMultipartUpload';
  }
  if (method === 'PUT') {
    return part === null ? 'PutObject' : `UploadPart ${part}`;
  }
  if (method === 'DELETE' && params.has('uploadId')) {
    return 'AbortMultipartUpload';
  }
  return `${method} ${query}`;
}

/** The operations the endpoint answered on one key, with their statuses, sorted. */
function callsFor(bucket: string, key: string): string[] {
  return s3()
    .requests()
    .filter((r) => r.bucket === bucket && r.key === key)
    .map((r) => `${operation(r.method, r.query)} ${r.status}`)
    .sort();
}

function blob(size: number, seed: string): { bytes: Buffer; digest: string; hex: string } {
  const bytes = Buffer.alloc(size, seed);
  const hex = createHash('sha256').update(bytes).digest('hex');
  return { bytes, digest: `sha256:${hex}`, hex };
}

/** A stream of `bytes` in 256 KiB chunks. */
function chunked(bytes: Buffer): Readable {
  const chunks: Buffer[] = [];
  for (let i = 0; i < bytes.byteLength; i += 256 * 1024) {
    chunks.push(bytes.subarray(i, i + 256 * 1024));
  }
  return Readable.from(chunks);
}

runBlobStoreConformance('S3BlobStore', () => makeStore());

describe('S3BlobStore', () => {
  it('sends a blob of several parts as a multipart upload, a small one as one PutObject', async () => {
    const t = await makeStore();
    try {
      const large = blob(11 * MiB, 'multipart');
      const smallOne = blob(1000, 'single');
      await t.store.write(large.digest, chunked(large.bytes), large.bytes.byteLength);
      await t.store.write(smallOne.digest, chunked(smallOne.bytes), 1000);
      const calls = (key: string): string[] => callsFor(t.bucket, key);
      assert.deepEqual(calls(`shoal/blobs/sha256/${large.hex}`), [
        'CompleteMultipartUpload 200',
        'CreateMultipartUpload 200',
        'UploadPart 1 200',
        'UploadPart 2 200',
        'UploadPart 3 200',
      ]);
      assert.deepEqual(calls(`shoal/blobs/sha256/${smallOne.hex}`), ['PutObject 200']);
    } finally {
      await t.cleanup();
    }
  });

  it('aborts the upload of a blob that fails verification, never completing it', async () => {
    const t = await makeStore();
    try {
      const claimed = blob(11 * MiB, 'claimed');
      const sent = blob(11 * MiB, 'sent');
      await assert.rejects(
        t.store.write(claimed.digest, chunked(sent.bytes), sent.bytes.byteLength),
        (error: unknown) => error instanceof BlobStoreError && error.code === 'DIGEST_MISMATCH',
      );
      // Parts still in flight when the digest fails are cancelled, so only the ends of the
      // upload are certain to be seen.
      const calls = callsFor(t.bucket, `shoal/blobs/sha256/${claimed.hex}`).filter(
        (call) => !call.startsWith('UploadPart '),
      );
      assert.deepEqual(calls, ['AbortMultipartUpload 204', 'CreateMultipartUpload 200']);
      assert.deepEqual(await t.leftovers(), []);
    } finally {
      await t.cleanup();
    }
  });

  it('reads a range with one ranged GET, never the whole object', async () => {
    const t = await makeStore();
    try {
      const b = blob(6 * MiB, 'ranged');
      await t.store.write(b.digest, chunked(b.bytes), b.bytes.byteLength);
      const stream = await t.store.read(b.digest, { start: 100, end: 199 });
      const chunks: Buffer[] = [];
      for await (const chunk of stream) {
        chunks.push(chunk as Buffer);
      }
      assert.ok(Buffer.concat(chunks).equals(b.bytes.subarray(100, 200)));
      const gets = s3()
        .requests()
        .filter(
          (r) =>
            r.bucket === t.bucket && r.method === 'GET' && r.key === `shoal/blobs/sha256/${b.hex}`,
        );
      assert.deepEqual(
        gets.map((r) => [r.range, r.status]),
        [['bytes=100-199', 206]],
      );
    } finally {
      await t.cleanup();
    }
  });

  it('init() checks the bucket and aborts uploads a crash left under its prefix', async () => {
    const t = await makeStore({ staleUploadAgeMs: 0 });
    try {
      const start = async (key: string): Promise<void> => {
        await t.client.send(new CreateMultipartUploadCommand({ Bucket: t.bucket, Key: key }), {
          abortSignal: AbortSignal.timeout(5000),
        });
      };
      await start(`shoal/blobs/sha256/${'a'.repeat(64)}`);
      await start('elsewhere/object');
      await t.store.init();
      const left = await t.leftovers();
      assert.equal(left.length, 1);
      assert.match(left[0] ?? '', /^elsewhere\/object /);

      const missing = new S3BlobStore({ client: t.client, bucket: 'no-such-bucket' });
      await assert.rejects(missing.init(), (error: unknown) => {
        assert.ok(error instanceof BlobStoreError);
        assert.equal(error.code, 'STORAGE_FAILED');
        return true;
      });
    } finally {
      await t.cleanup();
    }
  });

  it('gives up on a gateway that does not answer with TIMEOUT', async () => {
    // A socket that accepts and never answers: a hung gateway, which the real one cannot be
    // made to be.
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => sockets.add(socket));
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    const address = silent.address();
    assert.ok(address !== null && typeof address === 'object');
    const client = createS3Client({
      endpoint: `http://127.0.0.1:${address.port}`,
      region: 'us-east-1',
      accessKeyId: 'key',
      secretAccessKey: 'secret',
      forcePathStyle: true,
    });
    try {
      const store = new S3BlobStore({ client, bucket: 'hung', requestTimeoutMs: 300 });
      const started = Date.now();
      await assert.rejects(store.stat(blob(1, 'x').digest), (error: unknown) => {
        assert.ok(error instanceof BlobStoreError);
        assert.equal(error.code, 'TIMEOUT');
        return true;
      });
      assert.ok(Date.now() - started < 5000, 'the deadline, not a retry loop, ended the call');
    } finally {
      client.destroy();
      for (const socket of sockets) {
        socket.destroy();
      }
      silent.close();
    }
  });

  it('is what createBlobStore builds for SHOAL_STORE_KIND=s3', async () => {
    const endpoint = s3();
    const bucket = `config-${++buckets}`;
    await endpoint.createBucket(bucket);
    const store = createBlobStore({
      SHOAL_STORE_KIND: 's3',
      SHOAL_STORE_DIR: '/unused',
      SHOAL_S3_ENDPOINT: endpoint.endpoint,
      SHOAL_S3_REGION: endpoint.region,
      SHOAL_S3_BUCKET: bucket,
      SHOAL_S3_PREFIX: 'p/',
      SHOAL_S3_ACCESS_KEY_ID: endpoint.accessKeyId,
      SHOAL_S3_SECRET_ACCESS_KEY: endpoint.secretAccessKey,
      SHOAL_S3_FORCE_PATH_STYLE: true,
      SHOAL_S3_PART_SIZE_BYTES: 5 * MiB,
    });
    try {
      assert.ok(store instanceof S3BlobStore);
      await store.init();
      const b = blob(10, 'configured');
      await store.write(b.digest, chunked(b.bytes), 10);
      assert.deepEqual(await store.stat(b.digest), { size: 10 });
      assert.ok(
        s3()
          .requests()
          .some((r) => r.bucket === bucket && r.key === `p/blobs/sha256/${b.hex}`),
      );
    } finally {
      await store.close();
    }
  });
});
