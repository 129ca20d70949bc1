/**
 * The agent's content-addressed cache on disk:
 *
 *   <root>/blobs/<algorithm>/<hex>        verified content (blobs and manifests)
 *   <root>/blobs/<algorithm>/<hex>.type   a manifest's media type
 *   <root>/blobs/<algorithm>/<hex>.checked the file as it was when its digest last matched
 *   <root>/tmp/                           downloads in progress, cleared at start
 *
 * Content enters only through `commit`, after its digest has been verified, by a rename on
 * the same filesystem: a crash leaves either nothing or the whole verified file. Past the
 * size quota the least recently used unpinned entries are evicted; an entry being served is
 * pinned and never evicted. Downloads in progress count against the quota from the moment
 * their size is known (`reserve`).
 *
 * The disk is not trusted to keep what was committed: each open compares the file (one
 * `fstat`: size, inode, modification and change times) with the file as it was when its
 * digest was last checked, and hashes it again when anything differs. That fingerprint is
 * kept beside the file (`.checked`, written at commit and after each check, by a rename), so
 * content found at start-up is trusted without a full hash when its file is the one that
 * last verified: its change time moves with any write, truncation or replacement, and no
 * `utimes` can set it back, so a file changed while the agent was down is still hashed (and
 * a file with no or another fingerprint, as before). At most `MAX_CONCURRENT_CHECKS` hashes
 * run at once. Content that no longer matches is dropped (`onCorrupt`) and read as a miss, so
 * it is fetched again instead of served.
 */
import { randomUUID } from 'node:crypto';
import {
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  unlink,
  writeFile,
  type FileHandle,
} from 'node:fs/promises';
import { join } from 'node:path';

import {
  DigestHasher,
  digestOf,
  parseDigest,
  pieceBounds,
  pieceCount,
  pieceSizeFor,
  type Digest,
} from '@shoal/proto';

/** What `fstat` says of a file, enough to tell that it changed since its digest was checked. */
interface Fingerprint {
  readonly size: number;
  readonly ino: number;
  readonly mtimeMs: number;
  readonly ctimeMs: number;
}

interface Entry {
  size: number;
  /** Logical time of the last use; larger is more recent. */
  lastUsed: number;
  pins: number;
  /** The file as it was when its digest last matched; undefined until checked by this process. */
  checked?: Fingerprint;
  /** A check in progress, shared by concurrent opens of the same file. */
  checking?: { readonly fingerprint: Fingerprint; readonly problem: Promise<string | undefined> };
}

/** Bytes read at a time when a cached file is hashed again. */
const CHECK_READ_BYTES = 1024 * 1024;
/**
 * Cached files hashed again at once: after a restart peers may ask for many blobs at the
 * same moment, and each full hash reads the whole file.
 */
const MAX_CONCURRENT_CHECKS = 2;
/** Suffix of the file beside a blob that holds its last verified fingerprint. */
const CHECKED_SUFFIX = '.checked';

export interface ContentStoreEvents {
  /** Called each time an entry is evicted, with its digest and the bytes freed. */
  onEvict?(digest: Digest, size: number): void;
  /**
   * Called when cached content no longer matches its digest or size (it was dropped): a
   * manifest read back, or a blob opened; `reason` says what differed.
   */
  onCorrupt?(digest: Digest, kind: 'manifest' | 'blob', reason: string): void;
}

/** A verified file opened for reading; `release` unpins it. */
export interface OpenedContent {
  readonly handle: FileHandle;
  readonly size: number;
  release(): Promise<void>;
}

export class FsContentStore {
  readonly #root: string;
  readonly #maxBytes: number;
  readonly #events: ContentStoreEvents;
  readonly #entries = new Map<string, Entry>();
  /** Downloads in progress: digest -> the bytes they will add (see `reserve`). */
  readonly #reservations = new Map<string, number>();
  #totalBytes = 0;
  #reservedBytes = 0;
  #clock = 0;
  #hashChecks = 0;
  #checksRunning = 0;
  readonly #checkWaiters: (() => void)[] = [];

  constructor(root: string, maxBytes: number, events: ContentStoreEvents = {}) {
    this.#root = root;
    this.#maxBytes = maxBytes;
    this.#events = events;
  }

  /** Bytes of verified content held. */
  get totalBytes(): number {
    return this.#totalBytes;
  }

  /** Full hashes of cached files run by this process (a file changed, or not known verified). */
  get hashChecks(): number {
    return this.#hashChecks;
  }

  /** Bytes that downloads in progress will add (see `reserve`). */
  get reservedBytes(): number {
    return this.#reservedBytes;
  }

  /**
   * Counts a download in progress against the quota: `size` bytes are about to be written
   * for `digest`, so least recently used content is evicted now to make room, rather than the
   * disk holding the quota plus every download in flight. `commit` of the digest, or
   * `release`, ends the reservation.
   */
  async reserve(digest: Digest, size: number): Promise<void> {
    this.release(digest);
    this.#reservations.set(digest.toString(), size);
    this.#reservedBytes += size;
    await this.#evictOverQuota();
  }

  /** Ends a download's reservation (it failed, or was committed); nothing when there is none. */
  release(digest: Digest): void {
    const key = digest.toString();
    const size = this.#reservations.get(key);
    if (size !== undefined) {
      this.#reservations.delete(key);
      this.#reservedBytes -= size;
    }
  }

  /** Creates the folders, drops leftovers of interrupted downloads, indexes what is cached. */
  async init(): Promise<void> {
    await rm(join(this.#root, 'tmp'), { recursive: true, force: true });
    await mkdir(join(this.#root, 'tmp'), { recursive: true });
    const found: {
      key: string;
      size: number;
      mtimeMs: number;
      checked: Fingerprint | undefined;
    }[] = [];
    for (const algorithm of ['sha256', 'sha512']) {
      const dir = join(this.#root, 'blobs', algorithm);
      await mkdir(dir, { recursive: true });
      const names = await readdir(dir);
      const present = new Set(names);
      for (const name of names) {
        if (name.endsWith('.type')) {
          continue;
        }
        if (name.endsWith(CHECKED_SUFFIX)) {
          // A fingerprint whose file is gone (removed while the agent was down) is dropped.
          if (!present.has(name.slice(0, -CHECKED_SUFFIX.length))) {
            await rm(join(dir, name), { force: true });
          }
          continue;
        }
        let digest: Digest;
        try {
          digest = parseDigest(`${algorithm}:${name}`);
        } catch {
          // Not ours (or a partial name): never serve what we cannot name.
          await rm(join(dir, name), { force: true, recursive: true });
          continue;
        }
        const info = await stat(join(dir, name));
        found.push({
          key: digest.toString(),
          size: info.size,
          mtimeMs: info.mtimeMs,
          checked: present.has(`${name}${CHECKED_SUFFIX}`)
            ? await readFingerprint(join(dir, `${name}${CHECKED_SUFFIX}`))
            : undefined,
        });
      }
    }
    // Oldest first, so recency survives a restart as well as file times allow.
    for (const { key, size, checked } of found.sort((a, b) => a.mtimeMs - b.mtimeMs)) {
      const entry = this.#add(key, size);
      if (checked !== undefined) {
        // Trusted only while the file is this one: `#check` compares it at every open.
        entry.checked = checked;
      }
    }
    await this.#evictOverQuota();
  }

  /** Digests of everything cached, with sizes. */
  entries(): { digest: Digest; size: number }[] {
    return [...this.#entries].map(([key, entry]) => ({
      digest: parseDigest(key),
      size: entry.size,
    }));
  }

  has(digest: Digest): boolean {
    return this.#entries.has(digest.toString());
  }

  /** Size of cached content, or undefined when it is not cached. */
  sizeOf(digest: Digest): number | undefined {
    return this.#entries.get(digest.toString())?.size;
  }

  /**
   * Opens cached content, pinned until released; undefined when it is not cached, or no longer
   * matches its digest (then it is dropped: see the class comment).
   */
  async open(digest: Digest): Promise<OpenedContent | undefined> {
    const key = digest.toString();
    const entry = this.#entries.get(key);
    if (entry === undefined) {
      return undefined;
    }
    entry.pins += 1;
    entry.lastUsed = this.#tick();
    let handle: FileHandle;
    try {
      handle = await open(this.#pathOf(digest), 'r');
    } catch (error) {
      entry.pins -= 1;
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        // Removed behind our back: forget it rather than fail every request for it.
        this.#remove(key);
        return undefined;
      }
      throw error;
    }
    let sound: boolean;
    try {
      sound = await this.#check(digest, entry, handle);
    } catch (error) {
      entry.pins -= 1;
      await handle.close();
      throw error;
    }
    if (!sound) {
      entry.pins -= 1;
      await handle.close();
      return undefined;
    }
    let released = false;
    return {
      handle,
      size: entry.size,
      release: async () => {
        if (released) {
          return;
        }
        released = true;
        entry.pins -= 1;
        await handle.close();
        await this.#evictOverQuota();
      },
    };
  }

  /**
   * Piece `index` of a cached blob (the piece layout follows from its size), or undefined
   * when the blob is not cached or has no such piece. The bytes go into a buffer from `alloc`.
   */
  async readPiece(
    digest: Digest,
    index: number,
    alloc: (size: number) => Buffer = (size) => Buffer.allocUnsafe(size),
  ): Promise<Buffer | undefined> {
    const opened = await this.open(digest);
    if (opened === undefined) {
      return undefined;
    }
    try {
      const pieceSize = pieceSizeFor(opened.size);
      if (index >= pieceCount(opened.size, pieceSize)) {
        return undefined;
      }
      const { start, end } = pieceBounds(index, opened.size, pieceSize);
      const buffer = alloc(end - start);
      const { bytesRead } = await opened.handle.read(buffer, 0, buffer.length, start);
      return bytesRead === buffer.length ? buffer : undefined;
    } finally {
      await opened.release();
    }
  }

  /** A new empty file for a download in progress, with read and write access. */
  async createTemp(): Promise<{ path: string; handle: FileHandle }> {
    const path = join(this.#root, 'tmp', randomUUID());
    return { path, handle: await open(path, 'w+') };
  }

  /** Moves a verified temp file into the cache. The caller has checked its digest. */
  async commit(tempPath: string, digest: Digest, size: number): Promise<void> {
    await rename(tempPath, this.#pathOf(digest));
    this.release(digest);
    // The rename changed the file's change time: the fingerprint is taken after it.
    const checked = fingerprintOf(await stat(this.#pathOf(digest)));
    this.#add(digest.toString(), size).checked = checked;
    await this.#keepFingerprint(digest, checked);
    await this.#evictOverQuota();
  }

  /**
   * Stores small verified content (a manifest) with its media type. The bytes reach the disk
   * before the rename, as a blob's do: a crash leaves the old state or the whole manifest.
   */
  async putSmall(digest: Digest, bytes: Uint8Array, mediaType: string | undefined): Promise<void> {
    const temp = join(this.#root, 'tmp', randomUUID());
    try {
      const handle = await open(temp, 'w');
      try {
        await handle.writeFile(bytes);
        await handle.sync();
      } finally {
        await handle.close();
      }
      // The type file marks content as a manifest (empty when the upstream named no type).
      await writeFile(`${this.#pathOf(digest)}.type`, mediaType ?? '');
    } catch (error) {
      // A full disk: leave nothing half-written behind.
      await rm(temp, { force: true });
      await rm(`${this.#pathOf(digest)}.type`, { force: true });
      throw error;
    }
    await this.commit(temp, digest, bytes.length);
  }

  /**
   * Reads a cached manifest and its media type; undefined when the digest is not cached as a
   * manifest (content without a media type, or larger than `maxBytes`, is a blob: never read
   * whole into memory). The bytes are hashed again before they are handed out (a manifest is
   * small, and whatever changed it on disk must not reach a client): a manifest that no longer
   * matches its digest is dropped from the cache (`onCorrupt`) and read as a miss.
   */
  async getSmall(
    digest: Digest,
    maxBytes: number,
  ): Promise<{ bytes: Buffer; mediaType: string | undefined } | undefined> {
    const key = digest.toString();
    const entry = this.#entries.get(key);
    if (entry === undefined || entry.size > maxBytes) {
      return undefined;
    }
    let mediaType: string;
    try {
      mediaType = await readFile(`${this.#pathOf(digest)}.type`, 'utf8');
    } catch {
      return undefined;
    }
    try {
      const bytes = await readFile(this.#pathOf(digest));
      if (digestOf(bytes, digest.algorithm).toString() !== key) {
        await this.#drop(key, entry, digest, 'manifest', 'its bytes have another digest');
        return undefined;
      }
      entry.lastUsed = this.#tick();
      return { bytes, mediaType: mediaType === '' ? undefined : mediaType };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        this.#remove(key);
      }
      return undefined;
    }
  }

  /**
   * Whether the file open as `handle` still holds `entry`'s content: unchanged since its digest
   * last matched (one `fstat`), or hashed again now. Content that fails is dropped.
   */
  async #check(digest: Digest, entry: Entry, handle: FileHandle): Promise<boolean> {
    const now = fingerprintOf(await handle.stat());
    if (entry.checked !== undefined && sameFile(entry.checked, now)) {
      return true;
    }
    let problem: string | undefined;
    if (now.size !== entry.size) {
      problem = `its file holds ${now.size} bytes, not ${entry.size}`;
    } else {
      let running = entry.checking;
      if (running === undefined || !sameFile(running.fingerprint, now)) {
        running = {
          fingerprint: now,
          problem: this.#bounded(() => hashProblem(handle, digest, entry.size)),
        };
        entry.checking = running;
      }
      try {
        problem = await running.problem;
      } finally {
        if (entry.checking === running) {
          delete entry.checking;
        }
      }
      if (problem === undefined) {
        // Written to while it was hashed: what was read proves nothing about what is there now.
        if (!sameFile(fingerprintOf(await handle.stat()), now)) {
          problem = 'its file changed while it was checked';
        } else {
          entry.checked = now;
          await this.#keepFingerprint(digest, now);
        }
      }
    }
    if (problem === undefined) {
      return true;
    }
    await this.#drop(digest.toString(), entry, digest, 'blob', problem);
    return false;
  }

  /**
   * Drops content found damaged, once: the index entry, the file and its media type. A later
   * commit of the same digest made a new entry, which is left alone.
   */
  async #drop(
    key: string,
    entry: Entry,
    digest: Digest,
    kind: 'manifest' | 'blob',
    reason: string,
  ): Promise<void> {
    if (this.#entries.get(key) !== entry) {
      return;
    }
    this.#remove(key);
    await unlink(this.#pathOf(digest)).catch(() => undefined);
    await unlink(`${this.#pathOf(digest)}.type`).catch(() => undefined);
    await unlink(`${this.#pathOf(digest)}${CHECKED_SUFFIX}`).catch(() => undefined);
    this.#events.onCorrupt?.(digest, kind, reason);
  }

  /** Runs a hash when fewer than `MAX_CONCURRENT_CHECKS` run, else after one ends. */
  async #bounded<T>(run: () => Promise<T>): Promise<T> {
    while (this.#checksRunning >= MAX_CONCURRENT_CHECKS) {
      await new Promise<void>((resolve) => this.#checkWaiters.push(resolve));
    }
    this.#checksRunning += 1;
    this.#hashChecks += 1;
    try {
      return await run();
    } finally {
      this.#checksRunning -= 1;
      this.#checkWaiters.shift()?.();
    }
  }

  /**
   * Writes `fingerprint` beside the file (through a temp file and a rename: a crash leaves the
   * old one or the new one). A failure only costs a hash at the next start: logged nowhere.
   */
  async #keepFingerprint(digest: Digest, fingerprint: Fingerprint): Promise<void> {
    const temp = join(this.#root, 'tmp', `${randomUUID()}${CHECKED_SUFFIX}`);
    try {
      await writeFile(temp, JSON.stringify(fingerprint));
      await rename(temp, `${this.#pathOf(digest)}${CHECKED_SUFFIX}`);
    } catch {
      await rm(temp, { force: true });
    }
  }

  #pathOf(digest: Digest): string {
    return join(this.#root, 'blobs', digest.algorithm, digest.hex);
  }

  #add(key: string, size: number): Entry {
    const existing = this.#entries.get(key);
    if (existing === undefined) {
      this.#totalBytes += size;
      const entry: Entry = { size, lastUsed: this.#tick(), pins: 0 };
      this.#entries.set(key, entry);
      return entry;
    }
    // Same digest, same bytes: keep the entry (and its pins, which open readers will release).
    existing.lastUsed = this.#tick();
    return existing;
  }

  /** A logical clock for recency: unlike wall time it never ties. */
  #tick(): number {
    this.#clock += 1;
    return this.#clock;
  }

  #remove(key: string): void {
    const entry = this.#entries.get(key);
    if (entry !== undefined) {
      this.#totalBytes -= entry.size;
      this.#entries.delete(key);
    }
  }

  async #evictOverQuota(): Promise<void> {
    // Each pass takes its victim out of the index before it waits, so runs started by
    // concurrent commits and reservations never pick the same one.
    while (this.#totalBytes + this.#reservedBytes > this.#maxBytes) {
      let victim: [string, Entry] | undefined;
      for (const item of this.#entries) {
        if (item[1].pins === 0 && (victim === undefined || item[1].lastUsed < victim[1].lastUsed)) {
          victim = item;
        }
      }
      if (victim === undefined) {
        return;
      }
      const [key, entry] = victim;
      this.#remove(key);
      const digest = parseDigest(key);
      await unlink(this.#pathOf(digest)).catch(() => undefined);
      await unlink(`${this.#pathOf(digest)}.type`).catch(() => undefined);
      await unlink(`${this.#pathOf(digest)}${CHECKED_SUFFIX}`).catch(() => undefined);
      this.#events.onEvict?.(digest, entry.size);
    }
  }
}

function fingerprintOf(info: {
  size: number;
  ino: number;
  mtimeMs: number;
  ctimeMs: number;
}): Fingerprint {
  return { size: info.size, ino: info.ino, mtimeMs: info.mtimeMs, ctimeMs: info.ctimeMs };
}

/** The fingerprint kept in the file at `path`; undefined when it is missing or unreadable. */
async function readFingerprint(path: string): Promise<Fingerprint | undefined> {
  try {
    const value: unknown = JSON.parse(await readFile(path, 'utf8'));
    if (typeof value !== 'object' || value === null) {
      return undefined;
    }
    const fields = value as Record<string, unknown>;
    const { size, ino, mtimeMs, ctimeMs } = fields;
    return typeof size === 'number' &&
      typeof ino === 'number' &&
      typeof mtimeMs === 'number' &&
      typeof ctimeMs === 'number'
      ? { size, ino, mtimeMs, ctimeMs }
      : undefined;
  } catch {
    return undefined;
  }
}

function sameFile(a: Fingerprint, b: Fingerprint): boolean {
  return a.size === b.size && a.ino === b.ino && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs;
}

/**
 * Hashes the `size` bytes of the file open as `handle` (one buffer of `CHECK_READ_BYTES`,
 * never the whole file in memory); what is wrong with them, or undefined when they are
 * `digest`'s.
 */
async function hashProblem(
  handle: FileHandle,
  digest: Digest,
  size: number,
): Promise<string | undefined> {
  const hasher = new DigestHasher(digest.algorithm);
  const buffer = Buffer.allocUnsafe(Math.min(CHECK_READ_BYTES, Math.max(size, 1)));
  let position = 0;
  while (position < size) {
    const { bytesRead } = await handle.read(
      buffer,
      0,
      Math.min(buffer.length, size - position),
      position,
    );
    if (bytesRead === 0) {
      return `its file ends at ${position} of ${size} bytes`;
    }
    hasher.update(buffer.subarray(0, bytesRead));
    position += bytesRead;
  }
  const actual = hasher.digest();
  return actual.toString() === digest.toString()
    ? undefined
    : `its bytes have digest ${actual.toString()}`;
}
