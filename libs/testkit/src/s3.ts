/**
 * A real S3 HTTP endpoint for tests: s3rver (a Node S3 server with a filesystem store) run in
 * this process on a random port of 127.0.0.1, storing into a temporary directory that `stop()`
 * removes. It logs every request it answers, which is how tests count what the object gateway
 * served, from the gateway's side.
 *
 * s3rver 3.7.1 implements CreateBucket, PutObject, GetObject (with Range), HeadObject,
 * DeleteObject, ListObjects(V2) and CreateMultipartUpload / UploadPart /
 * CompleteMultipartUpload, but not AbortMultipartUpload (it answers 405 MethodNotAllowed) nor
 * ListMultipartUploads (501 NotImplemented). No other S3 server reachable here is smaller
 * (MinIO is in neither Debian nor npm; Ceph's radosgw needs a whole Ceph cluster), so the kit
 * adds those two operations in front of s3rver's router, working on s3rver's own on-disk
 * record of open uploads (`<bucket>/._S3rver_uploads/<uploadId>/`), and corrects s3rver's
 * answer to `Range: bytes=0-0` (see `firstByteRange`). Everything else is s3rver's.
 */
import type { IncomingMessage, Server } from 'node:http';
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { Readable } from 'node:stream';

import { makeTempDir } from './process.js';

/** One request the S3 endpoint answered. */
export interface S3Request {
  /** HTTP method, e.g. `GET`. */
  readonly method: string;
  /** Bucket named in the path, if any (the kit serves path-style requests). */
  readonly bucket: string | undefined;
  /** Object key named in the path, decoded, if any. */
  readonly key: string | undefined;
  /** The raw query string without `?`, e.g. `uploads` or `partNumber=1&uploadId=...`. */
  readonly query: string;
  /** The `Range` request header, if any. */
  readonly range: string | undefined;
  /** The HTTP status answered. */
  readonly status: number;
}

export interface S3Server {
  /** `http://127.0.0.1:<port>`; clients must use path-style addressing (`forcePathStyle`). */
  readonly endpoint: string;
  readonly port: number;
  readonly region: 'us-east-1';
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  /** Where the server keeps buckets and objects (removed by `stop()`). */
  readonly directory: string;
  /** Creates a bucket (3 to 63 lowercase letters, digits, dots and hyphens). */
  createBucket(name: string): Promise<void>;
  /** Every request answered so far, oldest first. */
  requests(): readonly S3Request[];
  /** Closes the server, its open connections included, and removes its directory. */
  stop(): Promise<void>;
}

export interface S3Options {
  /**
   * Access keys accepted besides the built-in one (e.g. the key a deployment gives its object
   * gateway), for as long as the server runs. s3rver keeps its accounts for the whole process:
   * another s3rver started meanwhile accepts them too.
   */
  readonly credentials?: readonly { accessKeyId: string; secretAccessKey: string }[];
  /** Buckets made before the server is returned. */
  readonly buckets?: readonly string[];
}

/** The part of Koa's context the kit's middleware uses. */
interface KoaContext {
  readonly method: string;
  readonly path: string;
  readonly querystring: string;
  readonly query: Record<string, string | string[] | undefined>;
  readonly req: IncomingMessage;
  readonly response: { get(field: string): string };
  status: number;
  body: unknown;
  type: string;
  length: number;
  set(field: string, value: string): void;
}

type KoaMiddleware = (ctx: KoaContext, next: () => Promise<void>) => Promise<void>;

/** The part of s3rver's API the kit uses (s3rver ships no types). */
interface S3rver {
  /** Koa's middleware stack, composed when the server starts listening. */
  readonly middleware: KoaMiddleware[];
  readonly httpServer?: Server;
  run(): Promise<{ port: number }>;
  close(): Promise<void>;
}

type S3rverConstructor = new (options: {
  address: string;
  port: number;
  directory: string;
  silent: boolean;
  resetOnClose: boolean;
}) => S3rver;

/** s3rver's built-in account; it accepts requests signed with these keys. */
const ACCESS_KEY_ID = 'S3RVER';
const SECRET_ACCESS_KEY = 'S3RVER';

/** Where s3rver records a bucket's open multipart uploads (its FilesystemStore layout). */
const UPLOADS_DIR = '._S3rver_uploads';

/** s3rver's upload ids are 32 hex characters; checking them keeps paths inside the store. */
const UPLOAD_ID = /^[0-9a-f]{1,64}$/;

/** The part of s3rver's account model the kit uses: one account, any number of key pairs. */
interface S3rverAccount {
  createKeyPair(accessKeyId: string, secretAccessKey: string): void;
  revokeAccessKey(accessKeyId: string): void;
}

export async function startS3(options: S3Options = {}): Promise<S3Server> {
  const require = createRequire(import.meta.url);
  // s3rver is CommonJS without types; its constructor's shape is declared above.
  const S3rverClass = require('s3rver') as S3rverConstructor;
  const account = (require('s3rver/lib/models/account') as { DUMMY_ACCOUNT: S3rverAccount })
    .DUMMY_ACCOUNT;
  const extraKeys = options.credentials ?? [];
  const dir = await makeTempDir('s3');
  const requests: S3Request[] = [];
  const server = new S3rverClass({
    address: '127.0.0.1',
    port: 0,
    directory: dir.path,
    silent: true,
    resetOnClose: false,
  });
  // Outermost first: the recorder sees the final status of every request, the range fix
  // trims what s3rver sends, and the two operations s3rver lacks are answered before its
  // router refuses them.
  server.middleware.unshift(recordRequests(requests), firstByteRange, missingOperations(dir.path));
  let port: number;
  try {
    ({ port } = await server.run());
  } catch (error) {
    await dir.remove();
    throw error;
  }
  const endpoint = `http://127.0.0.1:${port}`;
  for (const key of extraKeys) {
    account.createKeyPair(key.accessKeyId, key.secretAccessKey);
  }
  let stopped: Promise<void> | undefined;
  const s3: S3Server = {
    endpoint,
    port,
    region: 'us-east-1',
    accessKeyId: ACCESS_KEY_ID,
    secretAccessKey: SECRET_ACCESS_KEY,
    directory: dir.path,
    createBucket: async (name) => {
      // An unsigned request: s3rver accepts it, and the kit needs no SDK of its own.
      const response = await fetch(`${endpoint}/${encodeURIComponent(name)}`, {
        method: 'PUT',
        signal: AbortSignal.timeout(5000),
      });
      if (!response.ok) {
        throw new Error(
          `creating bucket ${name} failed: ${response.status} ${await response.text()}`,
        );
      }
    },
    requests: () => [...requests],
    stop: () => {
      stopped ??= (async () => {
        const closed = server.close();
        // Keep-alive sockets of clients the test did not destroy would hold close() open.
        server.httpServer?.closeAllConnections();
        await closed;
        for (const key of extraKeys) {
          account.revokeAccessKey(key.accessKeyId);
        }
        await dir.remove();
      })();
      return stopped;
    },
  };
  try {
    for (const bucket of options.buckets ?? []) {
      await s3.createBucket(bucket);
    }
  } catch (error) {
    await s3.stop();
    throw error;
  }
  return s3;
}

/** Splits a path-style request path into bucket and key. */
function splitPath(path: string): { bucket: string | undefined; key: string | undefined } {
  const match = /^\/([^/]+)(?:\/(.*))?$/.exec(path);
  const bucket = match?.[1];
  const key = match?.[2];
  return {
    bucket: bucket === undefined ? undefined : decodeURIComponent(bucket),
    key:
      key === undefined || key === ''
        ? undefined
        : key.split('/').map(decodeURIComponent).join('/'),
  };
}

function recordRequests(requests: S3Request[]): KoaMiddleware {
  return async (ctx, next) => {
    const { bucket, key } = splitPath(ctx.path);
    const range = ctx.req.headers.range;
    const record = (status: number): void => {
      requests.push({ method: ctx.method, bucket, key, query: ctx.querystring, range, status });
    };
    try {
      await next();
    } catch (error) {
      // s3rver's errors carry the status they are answered with.
      const status = (error as { status?: unknown }).status;
      record(typeof status === 'number' ? status : 500);
      throw error;
    }
    record(ctx.status);
  };
}

/**
 * s3rver takes the end of `Range: bytes=0-0` (0) for "no end" and sends the whole object with
 * `206` and `Content-Range: bytes 0-<last>/<size>`; S3 sends the first byte. This trims the
 * answer to what S3 sends.
 */
const firstByteRange: KoaMiddleware = async (ctx, next) => {
  await next();
  const body = ctx.body;
  const whole = /^bytes 0-\d+\/(\d+)$/.exec(ctx.response.get('Content-Range'));
  if (
    ctx.status === 206 &&
    ctx.req.headers.range === 'bytes=0-0' &&
    whole !== null &&
    body instanceof Readable
  ) {
    ctx.body = Readable.from(firstByte(body));
    ctx.set('Content-Range', `bytes 0-0/${whole[1] ?? ''}`);
    ctx.length = 1;
  }
};

async function* firstByte(source: Readable): AsyncGenerator<Buffer> {
  for await (const chunk of source) {
    yield (chunk as Buffer).subarray(0, 1);
    // Leaving the loop destroys the source, which closes the object file.
    return;
  }
}

/**
 * AbortMultipartUpload and ListMultipartUploads, on s3rver's record of open uploads.
 *
 * S3's abort is atomic. s3rver goes on writing a part whose client has gone (its `mkdirp`
 * and `.md5` file land after the socket closed), so a removal racing it would fail with
 * ENOTEMPTY or leave a recreated directory. The kit therefore waits for the parts of an
 * upload still being written before it removes the upload, for at most `PART_WAIT_MS`: s3rver
 * never settles a part whose request stream failed before its end.
 */
function missingOperations(root: string): KoaMiddleware {
  const partsInFlight = new Map<string, Set<Promise<unknown>>>();
  return async (ctx, next) => {
    const { bucket, key } = splitPath(ctx.path);
    if (bucket === undefined) {
      await next();
      return;
    }
    const uploadId = ctx.query.uploadId;
    if (ctx.method === 'PUT' && typeof uploadId === 'string') {
      const parts = partsInFlight.get(uploadId) ?? new Set();
      partsInFlight.set(uploadId, parts);
      const part = next();
      parts.add(part);
      try {
        await part;
      } finally {
        parts.delete(part);
        if (parts.size === 0) {
          partsInFlight.delete(uploadId);
        }
      }
    } else if (ctx.method === 'DELETE' && key !== undefined && typeof uploadId === 'string') {
      await settledWithin(partsInFlight.get(uploadId) ?? [], PART_WAIT_MS);
      await abortUpload(ctx, join(root, bucket), key, uploadId);
    } else if (ctx.method === 'GET' && key === undefined && 'uploads' in ctx.query) {
      const prefix = typeof ctx.query.prefix === 'string' ? ctx.query.prefix : '';
      await listUploads(ctx, join(root, bucket), bucket, prefix);
    } else {
      await next();
    }
  };
}

/** How long an abort waits for the parts of its upload still being written. */
const PART_WAIT_MS = 2000;

async function settledWithin(promises: Iterable<Promise<unknown>>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const elapsed = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  try {
    await Promise.race([Promise.allSettled(promises), elapsed]);
  } finally {
    clearTimeout(timer);
  }
}

async function abortUpload(
  ctx: KoaContext,
  bucketDir: string,
  key: string,
  uploadId: string,
): Promise<void> {
  if (!(await exists(bucketDir))) {
    s3Error(ctx, 404, 'NoSuchBucket', 'The specified bucket does not exist');
    return;
  }
  const uploadDir = join(bucketDir, UPLOADS_DIR, uploadId);
  const recordedKey = UPLOAD_ID.test(uploadId)
    ? await readFile(join(uploadDir, 'key'), 'utf8').catch(() => undefined)
    : undefined;
  if (recordedKey !== key) {
    s3Error(ctx, 404, 'NoSuchUpload', 'The specified upload does not exist');
    return;
  }
  await rm(uploadDir, { recursive: true, force: true, maxRetries: 3 });
  ctx.status = 204;
}

async function listUploads(
  ctx: KoaContext,
  bucketDir: string,
  bucket: string,
  prefix: string,
): Promise<void> {
  if (!(await exists(bucketDir))) {
    s3Error(ctx, 404, 'NoSuchBucket', 'The specified bucket does not exist');
    return;
  }
  const uploadsDir = join(bucketDir, UPLOADS_DIR);
  const ids = await readdir(uploadsDir).catch(() => []);
  const uploads: { key: string; id: string; initiated: Date }[] = [];
  for (const id of ids) {
    const uploadDir = join(uploadsDir, id);
    // An upload completed or aborted while this listing runs is simply left out.
    const key = await readFile(join(uploadDir, 'key'), 'utf8').catch(() => undefined);
    // The key file is written when the upload starts and never again: its time is the start.
    const info = await stat(join(uploadDir, 'key')).catch(() => undefined);
    if (key !== undefined && info !== undefined && key.startsWith(prefix)) {
      uploads.push({ key, id, initiated: info.mtime });
    }
  }
  uploads.sort((a, b) => (a.key === b.key ? cmp(a.id, b.id) : cmp(a.key, b.key)));
  const entries = uploads.map(
    (u) =>
      `<Upload><Key>${xml(u.key)}</Key><UploadId>${u.id}</UploadId>` +
      `<Initiator><ID>123456789000</ID><DisplayName>S3rver</DisplayName></Initiator>` +
      `<Owner><ID>123456789000</ID><DisplayName>S3rver</DisplayName></Owner>` +
      `<StorageClass>STANDARD</StorageClass>` +
      `<Initiated>${u.initiated.toISOString()}</Initiated></Upload>`,
  );
  ctx.type = 'application/xml';
  ctx.body =
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
    '<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
    `<Bucket>${xml(bucket)}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>` +
    `<Prefix>${xml(prefix)}</Prefix><MaxUploads>1000</MaxUploads>` +
    `<IsTruncated>false</IsTruncated>${entries.join('')}</ListMultipartUploadsResult>`;
}

function s3Error(ctx: KoaContext, status: number, code: string, message: string): void {
  ctx.status = status;
  ctx.type = 'application/xml';
  ctx.body =
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
    `<Error><Code>${code}</Code><Message>${xml(message)}</Message></Error>`;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function xml(text: string): string {
  return text
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;');
}
