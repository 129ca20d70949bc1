/**
 * One blob on the seed server's disk: being seeded (pieces arriving in order from the origin
 * or the object gateway) or complete. Pieces are served as soon as they are on disk and
 * hashed, which is what lets agents start before the origin fetch ends (cut-through).
 */
import { open, rename, unlink, writeFile, type FileHandle } from 'node:fs/promises';

import { pieceBounds, pieceCount, pieceSizeFor, type Digest } from '@shoal/proto';

/** The piece layout and hashes of a blob, as kept beside it and in the object gateway. */
export interface PieceManifest {
  readonly size: number;
  readonly pieceSize: number;
  /** Lowercase hex sha256 of every piece, in order. */
  readonly hashes: readonly string[];
}

export class SeedBlob {
  readonly digest: Digest;
  readonly size: number;
  readonly pieceSize: number;
  readonly count: number;
  readonly hashes: string[] = [];
  #handle: FileHandle;
  #path: string;
  #complete = false;
  #closed = false;

  private constructor(digest: Digest, size: number, path: string, handle: FileHandle) {
    this.digest = digest;
    this.size = size;
    this.pieceSize = pieceSizeFor(size);
    this.count = pieceCount(size, this.pieceSize);
    this.#path = path;
    this.#handle = handle;
  }

  /** A new blob to be written at `path` (a temp file). */
  static async create(digest: Digest, size: number, path: string): Promise<SeedBlob> {
    return new SeedBlob(digest, size, path, await open(path, 'w+'));
  }

  /** A complete blob found on disk with its piece manifest. */
  static async load(digest: Digest, path: string, manifest: PieceManifest): Promise<SeedBlob> {
    const blob = new SeedBlob(digest, manifest.size, path, await open(path, 'r'));
    if (blob.pieceSize !== manifest.pieceSize || manifest.hashes.length !== blob.count) {
      await blob.#handle.close();
      throw new Error(`piece manifest of ${digest.toString()} does not match its size`);
    }
    blob.hashes.push(...manifest.hashes);
    blob.#complete = true;
    return blob;
  }

  get complete(): boolean {
    return this.#complete;
  }

  /** Pieces on disk and hashed: `[0, ready)`. */
  get ready(): number {
    return this.hashes.length;
  }

  get manifest(): PieceManifest {
    return { size: this.size, pieceSize: this.pieceSize, hashes: [...this.hashes] };
  }

  /** Writes bytes at `offset` (the seeder writes in order). */
  async write(offset: number, bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.length) {
      const { bytesWritten } = await this.#handle.write(
        bytes,
        done,
        bytes.length - done,
        offset + done,
      );
      done += bytesWritten;
    }
  }

  /** Records the next piece's hash; the piece is on disk. */
  pieceDone(hash: string): void {
    this.hashes.push(hash);
  }

  /** Moves the verified file to `finalPath` and writes its manifest beside it. */
  async commit(finalPath: string): Promise<void> {
    await this.#handle.sync();
    await writeFile(`${finalPath}.pieces.json`, JSON.stringify(this.manifest));
    await rename(this.#path, finalPath);
    this.#path = finalPath;
    this.#complete = true;
  }

  /** The file's path (the temp path until commit). */
  get path(): string {
    return this.#path;
  }

  /** A piece's bytes, or undefined when it is not on disk yet (or the blob was dropped). */
  async readPiece(index: number): Promise<Buffer | undefined> {
    if (this.#closed || index < 0 || index >= this.ready) {
      return undefined;
    }
    const { start, end } = pieceBounds(index, this.size, this.pieceSize);
    const buffer = Buffer.allocUnsafe(end - start);
    const { bytesRead } = await this.#handle.read(buffer, 0, buffer.length, start);
    return bytesRead === buffer.length ? buffer : undefined;
  }

  /** Drops an incomplete blob: closes and removes its file. */
  async discard(): Promise<void> {
    await this.close();
    await unlink(this.#path).catch(() => undefined);
  }

  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      await this.#handle.close();
    }
  }
}
