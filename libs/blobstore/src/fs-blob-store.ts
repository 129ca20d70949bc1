/**
 * Blobs in a local directory, the default object gateway of a single seed server:
 *
 *   <root>/blobs/<alg>/<hex>          the verified blobs
 *   <root>/meta/<alg>/<hex>/<name>    their metadata documents
 *   <root>/tmp/                       writes in progress
 *
 * A write streams into `tmp/`, is verified, fsynced and then renamed into place, so a blob
 * path only ever holds complete, verified content, even after a crash (a crash leaves at most
 * a file in `tmp/`, removed by `init()`).
 */
import { randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import {
  link,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { addAbortSignal, Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

import type { Digest } from '@shoal/proto';

import type { BlobStat, ByteRange, ManagedBlobStore, StoredBlob } from './blob-store.js';
import {
  blobDigest,
  BlobVerifier,
  checkMetaBytes,
  checkMetaName,
  checkRange,
  checkSize,
  chunkBytes,
  clampRange,
  DIGEST_ALGORITHMS,
  isDigest,
} from './checks.js';
import { BlobNotFoundError, BlobStoreError } from './errors.js';

export class FsBlobStore implements ManagedBlobStore {
  /** The store's directory; created by `init()` if missing. */
  readonly root: string;
  readonly #tmpDir: string;

  constructor(root: string) {
    this.root = root;
    this.#tmpDir = join(root, 'tmp');
  }

  /** Creates the directories and removes writes a crash left in `tmp/`. */
  async init(signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    try {
      await rm(this.#tmpDir, { recursive: true, force: true });
      for (const dir of ['blobs', 'meta', 'tmp']) {
        await mkdir(join(this.root, dir), { recursive: true });
      }
    } catch (error) {
      throw storageFailed(`preparing ${this.root}`, error);
    }
  }

  /** Nothing to release: files are opened per call. */
  async close(): Promise<void> {
    // Kept async so that both stores close the same way.
  }

  async stat(digest: string, signal?: AbortSignal): Promise<BlobStat | undefined> {
    const d = blobDigest(digest);
    signal?.throwIfAborted();
    try {
      return { size: (await stat(this.#blobPath(d))).size };
    } catch (error) {
      if (isNotFound(error)) {
        return undefined;
      }
      throw storageFailed(`stat ${d.toString()}`, error);
    }
  }

  async read(digest: string, range?: ByteRange, signal?: AbortSignal): Promise<Readable> {
    const d = blobDigest(digest);
    if (range !== undefined) {
      checkRange(range);
    }
    signal?.throwIfAborted();
    let file;
    try {
      file = await open(this.#blobPath(d), 'r');
    } catch (error) {
      if (isNotFound(error)) {
        throw new BlobNotFoundError(d.toString(), { cause: error });
      }
      throw storageFailed(`open ${d.toString()}`, error);
    }
    let stream: Readable;
    try {
      // The open file stays readable if the blob is deleted meanwhile: a read in progress
      // finishes with the bytes it started with.
      const size = (await file.stat()).size;
      const clamped = range === undefined ? undefined : clampRange(d, range, size);
      stream = file.createReadStream(
        clamped === undefined ? {} : { start: clamped.start, end: clamped.end },
      );
    } catch (error) {
      await file.close();
      throw error instanceof BlobStoreError ? error : storageFailed(`read ${d.toString()}`, error);
    }
    return signal === undefined ? stream : addAbortSignal(signal, stream);
  }

  async write(digest: string, body: Readable, size: number, signal?: AbortSignal): Promise<void> {
    let d: Digest;
    try {
      d = blobDigest(digest);
      checkSize(size);
      signal?.throwIfAborted();
    } catch (error) {
      body.destroy();
      throw error;
    }
    const final = this.#blobPath(d);
    const tmp = join(this.#tmpDir, `${d.algorithm}-${d.hex}-${randomUUID()}`);
    const verifier = new BlobVerifier(d, size);
    try {
      await mkdir(this.#tmpDir, { recursive: true });
      await mkdir(dirname(final), { recursive: true });
      const verify = new Transform({
        writableObjectMode: true,
        transform(chunk, _encoding, callback) {
          try {
            const bytes = chunkBytes(chunk);
            verifier.update(bytes);
            callback(null, bytes);
          } catch (error) {
            callback(error as Error);
          }
        },
      });
      const file = createWriteStream(tmp, { flags: 'wx' });
      await (signal === undefined
        ? pipeline(body, verify, file)
        : pipeline(body, verify, file, { signal }));
      verifier.finish();
      // Data first, then the rename, then the directory entry: after a crash the blob path
      // holds either nothing or all of the verified bytes.
      await fsync(tmp);
      await rename(tmp, final);
      await fsync(dirname(final));
    } catch (error) {
      body.destroy();
      await rm(tmp, { force: true });
      throw failure(error, signal, `write ${d.toString()}`);
    }
  }

  /**
   * Hard-links a verified file into place: through `tmp/` and a rename, as `write` does, so
   * an existing blob is replaced atomically and a crash leaves at most a link in `tmp/`.
   * Resolves false on another filesystem (EXDEV) or where links are refused (EPERM).
   */
  async linkVerified(
    digest: string,
    path: string,
    size: number,
    signal?: AbortSignal,
  ): Promise<boolean> {
    const d = blobDigest(digest);
    checkSize(size);
    signal?.throwIfAborted();
    const final = this.#blobPath(d);
    const tmp = join(this.#tmpDir, `${d.algorithm}-${d.hex}-${randomUUID()}`);
    try {
      const actual = (await stat(path)).size;
      if (actual !== size) {
        throw new BlobStoreError(
          'SIZE_MISMATCH',
          `${path} is ${actual} bytes, not the announced ${size}; not stored`,
        );
      }
      await mkdir(this.#tmpDir, { recursive: true });
      await mkdir(dirname(final), { recursive: true });
      try {
        await link(path, tmp);
      } catch (error) {
        const code = (error as { code?: unknown } | undefined)?.code;
        if (code === 'EXDEV' || code === 'EPERM') {
          return false;
        }
        throw error;
      }
      await rename(tmp, final);
      // rename(2) does nothing when both names are links to one file (the blob was linked
      // from this file before): the temporary name is then still there.
      await rm(tmp, { force: true });
      await fsync(dirname(final));
      return true;
    } catch (error) {
      await rm(tmp, { force: true });
      throw failure(error, signal, `link ${d.toString()}`);
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
    signal?.throwIfAborted();
    const final = join(this.#metaDir(d), name);
    const tmp = join(this.#tmpDir, `meta-${d.hex}-${name}-${randomUUID()}`);
    try {
      await mkdir(this.#tmpDir, { recursive: true });
      await mkdir(dirname(final), { recursive: true });
      await writeFile(tmp, bytes, signal === undefined ? { flag: 'wx' } : { flag: 'wx', signal });
      await fsync(tmp);
      await rename(tmp, final);
      await fsync(dirname(final));
    } catch (error) {
      await rm(tmp, { force: true });
      throw failure(error, signal, `put metadata ${name} of ${d.toString()}`);
    }
  }

  async getMeta(digest: string, name: string, signal?: AbortSignal): Promise<Buffer | undefined> {
    const d = blobDigest(digest);
    checkMetaName(name);
    signal?.throwIfAborted();
    const path = join(this.#metaDir(d), name);
    try {
      return await readFile(path, signal === undefined ? {} : { signal });
    } catch (error) {
      if (isNotFound(error)) {
        return undefined;
      }
      throw failure(error, signal, `get metadata ${name} of ${d.toString()}`);
    }
  }

  async delete(digest: string, signal?: AbortSignal): Promise<void> {
    const d = blobDigest(digest);
    signal?.throwIfAborted();
    try {
      // The blob first: once it is gone nothing serves it, whatever happens to its metadata.
      await rm(this.#blobPath(d), { force: true });
      await rm(this.#metaDir(d), { recursive: true, force: true });
    } catch (error) {
      throw storageFailed(`delete ${d.toString()}`, error);
    }
  }

  async *list(signal?: AbortSignal): AsyncIterable<StoredBlob> {
    for (const algorithm of DIGEST_ALGORITHMS) {
      const dir = join(this.root, 'blobs', algorithm);
      let names: string[];
      try {
        names = await readdir(dir);
      } catch (error) {
        if (isNotFound(error)) {
          continue;
        }
        throw storageFailed(`list ${dir}`, error);
      }
      for (const hex of names) {
        signal?.throwIfAborted();
        const digest = `${algorithm}:${hex}`;
        if (!isDigest(digest)) {
          continue;
        }
        try {
          const s = await stat(join(dir, hex));
          yield { digest, size: s.size, storedAt: s.mtimeMs };
        } catch (error) {
          // Deleted since the directory was read.
          if (!isNotFound(error)) {
            throw storageFailed(`stat ${digest}`, error);
          }
        }
      }
    }
  }

  #blobPath(d: Digest): string {
    return join(this.root, 'blobs', d.algorithm, d.hex);
  }

  #metaDir(d: Digest): string {
    return join(this.root, 'meta', d.algorithm, d.hex);
  }
}

/** Flushes a file's data, or a directory's entries, to the disk. */
async function fsync(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function isNotFound(error: unknown): boolean {
  return (error as { code?: unknown } | undefined)?.code === 'ENOENT';
}

function storageFailed(what: string, error: unknown): BlobStoreError {
  const message = error instanceof Error ? error.message : String(error);
  return new BlobStoreError('STORAGE_FAILED', `${what} failed: ${message}`, { cause: error });
}

/** The caller's abort as its reason, a store error as it is, anything else as STORAGE_FAILED. */
function failure(error: unknown, signal: AbortSignal | undefined, what: string): unknown {
  if (signal?.aborted === true) {
    return signal.reason;
  }
  return error instanceof BlobStoreError ? error : storageFailed(what, error);
}
