/**
 * Blobs in an S3 bucket (AWS S3, MinIO, Ceph RGW, COS), on @aws-sdk/client-s3 only:
 *
 *   <prefix>blobs/<alg>/<hex>          the verified blobs
 *   <prefix>meta/<alg>/<hex>/<name>    their metadata documents
 *
 * A blob of at least one part is written as a multipart upload whose parts are sent while the
 * body streams in and is hashed; CompleteMultipartUpload is only called once the digest and
 * the size are verified, and AbortMultipartUpload otherwise, so the key never holds a bad
 * blob. A smaller blob is gathered in memory (less than one part) and sent with one PutObject
 * after verification.
 *
 * Every request carries an AbortSignal that fires on the caller's signal or after
 * `requestTimeoutMs`. The credentials need s3:GetObject, s3:PutObject, s3:DeleteObject,
 * s3:ListBucket (without it S3 answers 403 instead of 404 for an absent key),
 * s3:ListBucketMultipartUploads and s3:AbortMultipartUpload.
 */
import { createHash } from 'node:crypto';
import { addAbortSignal, Readable } from 'node:stream';

import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3ServiceException,
  UploadPartCommand,
  type CompletedPart,
  type S3Client,
} from '@aws-sdk/client-s3';
import type { Digest } from '@shoal/proto';

import {
  MAX_META_BYTES,
  type BlobStat,
  type ByteRange,
  type ManagedBlobStore,
  type StoredBlob,
} from './blob-store.js';
import {
  blobDigest,
  BlobVerifier,
  checkMetaBytes,
  checkMetaName,
  checkRange,
  checkSize,
  chunkBytes,
  isDigest,
} from './checks.js';
import { BlobNotFoundError, BlobStoreError } from './errors.js';

const MiB = 1024 * 1024;

/** S3's smallest part (except the last one of an upload), in bytes. */
export const MIN_PART_SIZE_BYTES = 5 * MiB;
/** S3's largest part, in bytes. */
export const MAX_PART_SIZE_BYTES = 5 * 1024 * MiB;
/** The default part size, in bytes (8 MiB). */
export const DEFAULT_PART_SIZE_BYTES = 8 * MiB;
/** S3's limit on the parts of one upload. */
const MAX_PARTS = 10_000;
/** S3's largest object, in bytes (5 TiB). */
const MAX_OBJECT_BYTES = 5 * 1024 * 1024 * MiB;

export interface S3BlobStoreOptions {
  /** The client, e.g. from `createS3Client`. */
  readonly client: S3Client;
  /** The bucket; it must exist. */
  readonly bucket: string;
  /** Prepended to every key, e.g. `shoal/` (with its slash). Default ''. */
  readonly prefix?: string;
  /**
   * Size of a multipart upload's parts in bytes: at least 5 MiB, at most 5 GiB, default 8 MiB.
   * Grown for a blob that would need more than S3's 10,000 parts. A write holds up to
   * (partsInFlight + 1) parts in memory.
   */
  readonly partSizeBytes?: number;
  /** Parts of one write being uploaded at once. Default 4. */
  readonly partsInFlight?: number;
  /**
   * Deadline of one S3 request in ms: until the response for most requests, including the
   * upload of one part; until the response headers for a blob read (a download in progress
   * is then bounded by the client's idle timeout and the caller's signal). Default 60000.
   */
  readonly requestTimeoutMs?: number;
  /** `init()` aborts multipart uploads under the prefix older than this, in ms. Default 24 h. */
  readonly staleUploadAgeMs?: number;
  /** `close()` destroys the client; set when the store made the client. Default false. */
  readonly ownsClient?: boolean;
}

export class S3BlobStore implements ManagedBlobStore {
  readonly bucket: string;
  readonly prefix: string;
  readonly partSizeBytes: number;
  readonly #client: S3Client;
  readonly #partsInFlight: number;
  readonly #timeoutMs: number;
  readonly #staleUploadAgeMs: number;
  readonly #ownsClient: boolean;

  constructor(options: S3BlobStoreOptions) {
    const partSize = options.partSizeBytes ?? DEFAULT_PART_SIZE_BYTES;
    if (
      !Number.isSafeInteger(partSize) ||
      partSize < MIN_PART_SIZE_BYTES ||
      partSize > MAX_PART_SIZE_BYTES
    ) {
      throw new BlobStoreError(
        'INVALID_ARGUMENT',
        `part size ${partSize} is not between S3's 5 MiB and 5 GiB`,
      );
    }
    const inFlight = options.partsInFlight ?? 4;
    if (!Number.isSafeInteger(inFlight) || inFlight < 1) {
      throw new BlobStoreError('INVALID_ARGUMENT', `parts in flight ${inFlight} is not >= 1`);
    }
    if (options.bucket === '') {
      throw new BlobStoreError('INVALID_ARGUMENT', 'an S3 blob store needs a bucket');
    }
    this.bucket = options.bucket;
    this.prefix = options.prefix ?? '';
    this.partSizeBytes = partSize;
    this.#client = options.client;
    this.#partsInFlight = inFlight;
    this.#timeoutMs = options.requestTimeoutMs ?? 60_000;
    this.#staleUploadAgeMs = options.staleUploadAgeMs ?? 24 * 60 * 60 * 1000;
    this.#ownsClient = options.ownsClient ?? false;
  }

  /**
   * Checks that the bucket answers, and aborts the multipart uploads under the prefix that a
   * crash left behind (older than `staleUploadAgeMs`).
   */
  async init(signal?: AbortSignal): Promise<void> {
    await this.#send(
      `head bucket ${this.bucket}`,
      (s) => this.#client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal: s }),
      signal,
    );
    const cutoff = Date.now() - this.#staleUploadAgeMs;
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (;;) {
      const page = await this.#send(
        'list multipart uploads',
        (s) =>
          this.#client.send(
            new ListMultipartUploadsCommand({
              Bucket: this.bucket,
              Prefix: `${this.prefix}blobs/`,
              ...(keyMarker === undefined ? {} : { KeyMarker: keyMarker }),
              ...(uploadIdMarker === undefined ? {} : { UploadIdMarker: uploadIdMarker }),
            }),
            { abortSignal: s },
          ),
        signal,
      );
      for (const upload of page.Uploads ?? []) {
        const started = upload.Initiated?.getTime() ?? 0;
        if (upload.Key !== undefined && upload.UploadId !== undefined && started <= cutoff) {
          await this.#abortUpload(upload.Key, upload.UploadId, signal);
        }
      }
      if (page.IsTruncated !== true) {
        return;
      }
      keyMarker = page.NextKeyMarker;
      uploadIdMarker = page.NextUploadIdMarker;
    }
  }

  async close(): Promise<void> {
    if (this.#ownsClient) {
      this.#client.destroy();
    }
    return Promise.resolve();
  }

  async stat(digest: string, signal?: AbortSignal): Promise<BlobStat | undefined> {
    const d = blobDigest(digest);
    const key = this.#blobKey(d);
    try {
      const head = await this.#send(
        `stat ${d.toString()}`,
        (s) =>
          this.#client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }), {
            abortSignal: s,
          }),
        signal,
        { notFound: true },
      );
      if (head.ContentLength === undefined) {
        throw new BlobStoreError('STORAGE_FAILED', `stat ${d.toString()}: no Content-Length`);
      }
      return { size: head.ContentLength };
    } catch (error) {
      if (error instanceof NotFound) {
        return undefined;
      }
      throw error;
    }
  }

  async read(digest: string, range?: ByteRange, signal?: AbortSignal): Promise<Readable> {
    const d = blobDigest(digest);
    if (range !== undefined) {
      checkRange(range);
    }
    const key = this.#blobKey(d);
    let output;
    try {
      // The deadline covers the wait for the response headers only: `#send` lifts it once
      // they arrive, and the caller's signal is tied to the body below.
      output = await this.#send(
        `read ${d.toString()}`,
        (s) =>
          this.#client.send(
            new GetObjectCommand({
              Bucket: this.bucket,
              Key: key,
              ...(range === undefined ? {} : { Range: `bytes=${range.start}-${range.end}` }),
            }),
            { abortSignal: s },
          ),
        signal,
        { notFound: true, rangeNotSatisfiable: true },
      );
    } catch (error) {
      if (error instanceof NotFound) {
        throw new BlobNotFoundError(d.toString(), { cause: error.cause });
      }
      if (error instanceof RangeNotSatisfiable) {
        throw new BlobStoreError(
          'RANGE_NOT_SATISFIABLE',
          `range ${range?.start}-${range?.end} starts past the end of ${d.toString()}`,
          { cause: error.cause },
        );
      }
      throw error;
    }
    const body = output.Body;
    if (!(body instanceof Readable)) {
      throw new BlobStoreError('STORAGE_FAILED', `read ${d.toString()}: the body is not a stream`);
    }
    return signal === undefined ? body : addAbortSignal(signal, body);
  }

  async write(digest: string, body: Readable, size: number, signal?: AbortSignal): Promise<void> {
    let d: Digest;
    try {
      d = blobDigest(digest);
      checkSize(size);
      if (size > MAX_OBJECT_BYTES) {
        throw new BlobStoreError('INVALID_ARGUMENT', `${size} bytes is over S3's 5 TiB limit`);
      }
      signal?.throwIfAborted();
    } catch (error) {
      body.destroy();
      throw error;
    }
    // The caller's abort ends the body at once, even while it is waiting for bytes.
    const chunks = signal === undefined ? body : addAbortSignal(signal, body);
    const verifier = new BlobVerifier(d, size);
    const partSize = this.#partSizeFor(size);
    try {
      if (size < partSize) {
        await this.#writeSmall(d, chunks, size, verifier, signal);
      } else {
        await this.#writeMultipart(d, chunks, size, partSize, verifier, signal);
      }
    } catch (error) {
      body.destroy();
      throw this.#failure(error, `write ${d.toString()}`, signal);
    }
  }

  async putMeta(
    digest: string,
    name: string,
    bytes: Uint8Array,
    signal?: AbortSignal,
  ): Promise<void> {
    const d = blobDigest(digest);
    checkMetaName(name);
    checkMetaBytes(bytes);
    const key = this.#metaKey(d, name);
    const body = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    await this.#send(
      `put metadata ${name} of ${d.toString()}`,
      (s) =>
        this.#client.send(
          new PutObjectCommand({
            Bucket: this.bucket,
            Key: key,
            Body: body,
            ContentLength: body.byteLength,
            ContentMD5: md5(body),
            ContentType: 'application/octet-stream',
          }),
          { abortSignal: s },
        ),
      signal,
    );
  }

  async getMeta(digest: string, name: string, signal?: AbortSignal): Promise<Buffer | undefined> {
    const d = blobDigest(digest);
    checkMetaName(name);
    const key = this.#metaKey(d, name);
    const what = `get metadata ${name} of ${d.toString()}`;
    try {
      // The document is small, so its download is inside the request's deadline too.
      return await this.#send(
        what,
        async (s) => {
          const output = await this.#client.send(
            new GetObjectCommand({ Bucket: this.bucket, Key: key }),
            { abortSignal: s },
          );
          if (output.Body === undefined || (output.ContentLength ?? 0) > MAX_META_BYTES) {
            throw new BlobStoreError('STORAGE_FAILED', `${what}: no body or an oversized one`);
          }
          const bytes = await output.Body.transformToByteArray();
          return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        },
        signal,
        { notFound: true },
      );
    } catch (error) {
      if (error instanceof NotFound) {
        return undefined;
      }
      throw error;
    }
  }

  async delete(digest: string, signal?: AbortSignal): Promise<void> {
    const d = blobDigest(digest);
    // The blob first: once it is gone nothing serves it, whatever happens to its metadata.
    await this.#deleteKey(this.#blobKey(d), signal);
    const metaPrefix = `${this.prefix}meta/${d.algorithm}/${d.hex}/`;
    let token: string | undefined;
    do {
      const page = await this.#send(
        `list metadata of ${d.toString()}`,
        (s) =>
          this.#client.send(
            new ListObjectsV2Command({
              Bucket: this.bucket,
              Prefix: metaPrefix,
              ...(token === undefined ? {} : { ContinuationToken: token }),
            }),
            { abortSignal: s },
          ),
        signal,
      );
      // One DeleteObject per document rather than DeleteObjects: a blob has a few documents,
      // and DeleteObjects' required checksums are where S3-compatible gateways differ most.
      for (const object of page.Contents ?? []) {
        if (object.Key !== undefined) {
          await this.#deleteKey(object.Key, signal);
        }
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  async *list(signal?: AbortSignal): AsyncIterable<StoredBlob> {
    const prefix = `${this.prefix}blobs/`;
    let token: string | undefined;
    do {
      const page = await this.#send(
        'list blobs',
        (s) =>
          this.#client.send(
            new ListObjectsV2Command({
              Bucket: this.bucket,
              Prefix: prefix,
              ...(token === undefined ? {} : { ContinuationToken: token }),
            }),
            { abortSignal: s },
          ),
        signal,
      );
      for (const object of page.Contents ?? []) {
        // `<prefix>blobs/<algorithm>/<hex>`; anything else under the prefix is not ours.
        const digest = (object.Key ?? '').slice(prefix.length).replace('/', ':');
        if (isDigest(digest) && object.Size !== undefined) {
          yield { digest, size: object.Size, storedAt: object.LastModified?.getTime() ?? 0 };
        }
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  /** Gathers a blob smaller than one part, verifies it, then stores it with one request. */
  async #writeSmall(
    d: Digest,
    body: Readable,
    size: number,
    verifier: BlobVerifier,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const buffer = Buffer.allocUnsafe(size);
    for await (const chunk of body) {
      const bytes = chunkBytes(chunk);
      // update() refuses bytes past `size` before they are copied, so the buffer cannot overflow.
      verifier.update(bytes);
      bytes.copy(buffer, verifier.received - bytes.byteLength);
    }
    verifier.finish();
    const key = this.#blobKey(d);
    await this.#send(
      `put ${d.toString()}`,
      (s) =>
        this.#client.send(
          new PutObjectCommand({
            Bucket: this.bucket,
            Key: key,
            Body: buffer,
            ContentLength: size,
            ContentMD5: md5(buffer),
            ContentType: 'application/octet-stream',
          }),
          { abortSignal: s },
        ),
      signal,
    );
  }

  /**
   * Uploads parts while the body streams in (at most `partsInFlight` at once, which is the
   * back-pressure on the body), and completes the upload only after verification.
   */
  async #writeMultipart(
    d: Digest,
    body: Readable,
    size: number,
    partSize: number,
    verifier: BlobVerifier,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const key = this.#blobKey(d);
    signal?.throwIfAborted();
    // Not cut short by the caller's abort (under its deadline only): an upload the gateway
    // created as the request was cut would be left open, its id never known. One created after
    // the caller aborted is aborted at once instead.
    const created = await this.#send(
      `start upload of ${d.toString()}`,
      (s) =>
        this.#client.send(
          new CreateMultipartUploadCommand({
            Bucket: this.bucket,
            Key: key,
            ContentType: 'application/octet-stream',
          }),
          { abortSignal: s },
        ),
      undefined,
    );
    const uploadId = created.UploadId;
    if (uploadId === undefined) {
      throw new BlobStoreError('STORAGE_FAILED', `start upload of ${d.toString()}: no UploadId`);
    }
    if (signal?.aborted === true) {
      await this.#abortUpload(key, uploadId).catch(() => undefined);
      throw signal.reason;
    }
    // Ends the parts in flight as soon as the write fails, whatever the reason.
    const stop = new AbortController();
    const partSignal = signal === undefined ? stop.signal : AbortSignal.any([signal, stop.signal]);
    const parts: CompletedPart[] = [];
    const inFlight = new Set<Promise<void>>();
    let partFailure: Error | undefined;
    const sendPart = (partNumber: number, bytes: Buffer): void => {
      const sent: Promise<void> = this.#send(
        `upload part ${partNumber} of ${d.toString()}`,
        (s) =>
          this.#client.send(
            new UploadPartCommand({
              Bucket: this.bucket,
              Key: key,
              UploadId: uploadId,
              PartNumber: partNumber,
              Body: bytes,
              ContentLength: bytes.byteLength,
              ContentMD5: md5(bytes),
            }),
            { abortSignal: s },
          ),
        partSignal,
      )
        .then((output) => {
          if (output.ETag === undefined) {
            throw new BlobStoreError('STORAGE_FAILED', `upload part ${partNumber}: no ETag`);
          }
          parts.push({ PartNumber: partNumber, ETag: output.ETag });
        })
        // A part never rejects: its failure is kept and ends the write at the next check.
        .catch((error: unknown) => {
          partFailure ??=
            error instanceof Error
              ? error
              : new BlobStoreError('STORAGE_FAILED', `upload part ${partNumber} failed`, {
                  cause: error,
                });
          stop.abort();
        })
        .finally(() => inFlight.delete(sent));
      inFlight.add(sent);
    };
    const checkParts = (): void => {
      if (partFailure !== undefined) {
        throw partFailure;
      }
    };

    try {
      let partNumber = 1;
      let handedOff = 0;
      let buffer = Buffer.allocUnsafe(Math.min(partSize, size));
      let filled = 0;
      for await (const chunk of body) {
        checkParts();
        const bytes = chunkBytes(chunk);
        // update() refuses bytes past `size`, so a full buffer always has a successor with
        // room for the rest of the chunk.
        verifier.update(bytes);
        let offset = 0;
        while (offset < bytes.byteLength) {
          const copied = bytes.copy(buffer, filled, offset);
          filled += copied;
          offset += copied;
          if (filled === buffer.byteLength) {
            while (inFlight.size >= this.#partsInFlight) {
              await Promise.race(inFlight);
            }
            checkParts();
            sendPart(partNumber++, buffer);
            handedOff += filled;
            buffer = Buffer.allocUnsafe(Math.min(partSize, size - handedOff));
            filled = 0;
          }
        }
      }
      verifier.finish();
      await Promise.all(inFlight);
      checkParts();
      parts.sort((a, b) => (a.PartNumber ?? 0) - (b.PartNumber ?? 0));
      await this.#send(
        `complete upload of ${d.toString()}`,
        (s) =>
          this.#client.send(
            new CompleteMultipartUploadCommand({
              Bucket: this.bucket,
              Key: key,
              UploadId: uploadId,
              MultipartUpload: { Parts: parts },
            }),
            { abortSignal: s },
          ),
        signal,
      );
    } catch (error) {
      stop.abort();
      await Promise.all(inFlight);
      // Without the caller's signal: the caller may be the one who aborted.
      await this.#abortUpload(key, uploadId).catch(() => {
        // The upload stays invisible; init() or a bucket lifecycle rule removes it later.
      });
      throw error;
    }
  }

  async #abortUpload(key: string, uploadId: string, signal?: AbortSignal): Promise<void> {
    try {
      await this.#send(
        `abort upload ${uploadId}`,
        (s) =>
          this.#client.send(
            new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId }),
            { abortSignal: s },
          ),
        signal,
        { notFound: true },
      );
    } catch (error) {
      // Already gone (completed or aborted by someone else) is what we wanted.
      if (!(error instanceof NotFound)) {
        throw error;
      }
    }
  }

  async #deleteKey(key: string, signal: AbortSignal | undefined): Promise<void> {
    await this.#send(
      `delete ${key}`,
      (s) =>
        this.#client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }), {
          abortSignal: s,
        }),
      signal,
    );
  }

  /**
   * Runs one request under a deadline and the caller's signal, and turns its failure into a
   * BlobStoreError (or the caller's abort reason). `expect` names the answers the caller
   * handles itself; they arrive as NotFound / RangeNotSatisfiable.
   */
  async #send<T>(
    what: string,
    request: (signal: AbortSignal) => Promise<T>,
    signal: AbortSignal | undefined,
    expect: { notFound?: boolean; rangeNotSatisfiable?: boolean } = {},
  ): Promise<T> {
    signal?.throwIfAborted();
    const deadline = new Deadline(this.#timeoutMs, signal);
    try {
      return await request(deadline.signal);
    } catch (error) {
      if (!deadline.timedOut && signal?.aborted !== true) {
        const status = httpStatus(error);
        if (expect.notFound === true && (status === 404 || isNamed(error, 'NoSuchKey'))) {
          throw new NotFound(error);
        }
        if (expect.rangeNotSatisfiable === true && status === 416) {
          throw new RangeNotSatisfiable(error);
        }
      }
      throw this.#failure(error, what, signal, deadline);
    } finally {
      deadline.dispose();
    }
  }

  #failure(error: unknown, what: string, signal?: AbortSignal, deadline?: Deadline): unknown {
    if (signal?.aborted === true) {
      return signal.reason;
    }
    if (error instanceof BlobStoreError) {
      return error;
    }
    if (deadline?.timedOut === true || isNamed(error, 'TimeoutError')) {
      return new BlobStoreError('TIMEOUT', `${what}: no answer from S3 in time`, { cause: error });
    }
    const name = error instanceof Error ? error.name : 'Error';
    const message = error instanceof Error ? error.message : String(error);
    const status = httpStatus(error);
    return new BlobStoreError(
      'STORAGE_FAILED',
      `${what} failed: ${name}${status === undefined ? '' : ` (HTTP ${status})`}: ${message}`,
      { cause: error },
    );
  }

  /** The configured part size, grown so that the blob fits in S3's 10,000 parts. */
  #partSizeFor(size: number): number {
    return Math.max(this.partSizeBytes, Math.ceil(size / MAX_PARTS / MiB) * MiB);
  }

  #blobKey(d: Digest): string {
    return `${this.prefix}blobs/${d.algorithm}/${d.hex}`;
  }

  #metaKey(d: Digest, name: string): string {
    return `${this.prefix}meta/${d.algorithm}/${d.hex}/${name}`;
  }
}

/** An AbortSignal that fires on the caller's signal or after `timeoutMs`, until disposed. */
class Deadline {
  readonly #controller = new AbortController();
  readonly #timer: NodeJS.Timeout;
  readonly #parent: AbortSignal | undefined;
  readonly #onParentAbort = (): void => {
    this.#controller.abort(this.#parent?.reason);
  };
  #timedOut = false;

  constructor(timeoutMs: number, parent: AbortSignal | undefined) {
    this.#parent = parent;
    this.#timer = setTimeout(() => {
      this.#timedOut = true;
      this.#controller.abort(new BlobStoreError('TIMEOUT', `no answer in ${timeoutMs} ms`));
    }, timeoutMs);
    parent?.addEventListener('abort', this.#onParentAbort, { once: true });
  }

  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  get timedOut(): boolean {
    return this.#timedOut;
  }

  dispose(): void {
    clearTimeout(this.#timer);
    this.#parent?.removeEventListener('abort', this.#onParentAbort);
  }
}

/** An expected 404, handed from `#send` to the method that treats it as an answer. */
class NotFound extends Error {
  constructor(cause: unknown) {
    super('not found', { cause });
  }
}

/** An expected 416, likewise. */
class RangeNotSatisfiable extends Error {
  constructor(cause: unknown) {
    super('range not satisfiable', { cause });
  }
}

function httpStatus(error: unknown): number | undefined {
  return error instanceof S3ServiceException ? error.$metadata.httpStatusCode : undefined;
}

function isNamed(error: unknown, name: string): boolean {
  return error instanceof Error && error.name === name;
}

function md5(bytes: Uint8Array): string {
  return createHash('md5').update(bytes).digest('base64');
}
