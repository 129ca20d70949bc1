/**
 * Reads whole blobs from a registry with a service's own credentials, into blocks it reuses.
 *
 * The seed server reads every blob of the cluster from the origin once. Through node:http each
 * GiB read was two GiB of fresh 64 KiB buffers (one per socket read, one per parsed body chunk),
 * and V8 answered that external memory with a full collection every 20 to 40 MiB: about 40 % of
 * the seed server's CPU per byte went to V8's collector threads. Here the socket is read into
 * one buffer per connection (`RawHttpClient`) and the body goes into a few blocks of
 * `blockBytes` that go round (read into them from the socket where the body's length is known,
 * else copied): a block handed to the caller is lent until it asks for the next one, so the
 * caller must be done with it (hashed, written) by then.
 *
 * The registry's token flow (a 401 challenge answered once) and redirects to its storage are
 * followed as `RegistryReader` follows them; the Authorization header never goes to another
 * origin.
 */
import type { Digest } from '@shoal/proto';
import { RAW_READ_BYTES, RawHttpClient, type ResponseHeaders } from '@shoal/runtime/raw-http';

import {
  isStorageRefusal,
  StorageRefusedError,
  UpstreamTimeoutError,
  type UpstreamTimeouts,
} from './client.js';
import type { RegistryAuth } from './credentials.js';
import { registryUrl, type UpstreamRegistry } from './registries.js';

/** Default size of the blocks a body is copied into, in bytes. */
export const BLOB_BLOCK_BYTES = 1024 * 1024;
/**
 * Longest the bytes of a partly filled block wait for more while the caller waits, in ms: from
 * a slow origin the caller gets what has arrived rather than waiting for a whole block.
 */
export const BLOB_HOLD_MS = 50;
/** Blocks one body uses at most: one filling, one ready, one lent to the caller. */
const BLOCKS_PER_BODY = 3;
/** Blocks kept between bodies. */
const MAX_IDLE_BLOCKS = 12;
/** Most of the body kept from an answer other than the blob (an error, a redirect), in bytes. */
const MAX_ANSWER_BYTES = 64 * 1024;
const MAX_REDIRECTIONS = 5;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);

export interface BlobReaderOptions {
  readonly timeouts: UpstreamTimeouts;
  /** Sent as User-Agent; registries log it. */
  readonly userAgent: string;
  /**
   * Size of the blocks the body is handed over in, in bytes (default `BLOB_BLOCK_BYTES`); at
   * least `RAW_READ_BYTES`, so that one socket read never needs more than one fresh block.
   */
  readonly blockBytes?: number;
  /** See `BLOB_HOLD_MS`. */
  readonly holdMs?: number;
  /**
   * Bytes after which a body's first block is handed over without waiting to fill (default:
   * the whole block). The seed server cuts pieces of 256 KiB and more and announces each one as
   * soon as it has it: on a cold pull every agent waits on the first piece, and a whole first
   * block made them wait for a MiB to arrive.
   */
  readonly firstBlockBytes?: number;
}

/** Where a reader's Authorization headers come from (`RegistryAuth`, or a stand-in in tests). */
export type BlobAuth = Pick<RegistryAuth, 'current' | 'answer'>;

/** A registry's final answer to a blob GET. */
export interface OpenedBlob {
  readonly status: number;
  readonly headers: ResponseHeaders;
  /** Content-Length of the answer, when sent. */
  readonly size: number | undefined;
  /**
   * The 401 challenge the reader answered on the way to this answer, if it answered one: a
   * refusal of the retry may carry none (a bare 403) and this still says why (a token realm
   * the credentials may not go to, for one).
   */
  readonly challenge?: string;
  /**
   * The body of an answer other than 200 (an OCI error, a challenge), at most 64 KiB: a mirror
   * hands it to its client as it came. Empty for a 200.
   */
  readonly answer: Buffer;
  /**
   * The body of a 200, in order, in blocks of up to `blockBytes`; each block is lent until the
   * next is asked for (or the iteration ends). Empty for any other status. Throws when the
   * transfer fails.
   */
  readonly blocks: AsyncIterableIterator<Buffer>;
  /** Stops the transfer (the connection is closed); the blocks then end with `reason`. */
  cancel(reason: Error): void;
}

export class BlobReader {
  readonly #client = new RawHttpClient();
  readonly #auth: BlobAuth;
  readonly #options: BlobReaderOptions;
  readonly #blockBytes: number;
  /** Blocks no body uses now, for the next. */
  readonly #idle: Buffer[] = [];

  constructor(auth: BlobAuth, options: BlobReaderOptions) {
    this.#auth = auth;
    this.#options = options;
    // A read spanning several fresh blocks would need more than the three a body may use.
    this.#blockBytes = Math.max(options.blockBytes ?? BLOB_BLOCK_BYTES, RAW_READ_BYTES);
  }

  /**
   * GETs a blob; resolves with the final answer once its head has arrived. `forwarded`: a
   * client's own Authorization (a mirror's request), sent as it is instead of the reader's
   * credentials; a challenge is then the client's to answer, and comes back as the answer.
   * `from`: the blob from this byte on (`Range: bytes=<from>-`, to resume a transfer that
   * broke off); its body comes in blocks when the answer is 206, or 200 (a registry that
   * ignores Range sends the whole blob: the caller skips what it has), and any other answer
   * comes with its body's first 64 KiB, as a refusal does. `until`: the read ends before this
   * byte (`Range: bytes=<from>-<until - 1>`, a part of the blob); a registry that ignores
   * Range sends the whole blob, which the caller cuts.
   */
  async open(
    registry: UpstreamRegistry,
    repository: string,
    digest: Digest,
    signal: AbortSignal,
    forwarded?: { readonly authorization: string | undefined },
    from = 0,
    until?: number,
  ): Promise<OpenedBlob> {
    const start = registryUrl(registry, `/v2/${repository}/blobs/${digest.toString()}`);
    let url = start;
    let authorization =
      forwarded === undefined ? this.#auth.current(registry, repository) : forwarded.authorization;
    let challenged = forwarded !== undefined;
    let answeredChallenge: string | undefined;
    /** What the registry was last asked with: a refused storage URL is asked for again so. */
    let registryAsked = { authorization, answeredChallenge };
    let storageRetried = false;
    for (let hop = 0; ; hop += 1) {
      const answer = await this.#get(url, authorization, signal, blobRangeHeader(from, until));
      if (isStorageRefusal(start, url, answer.status)) {
        // The registry authorized the read and sent it to its storage, which refused it (a
        // signed URL past its expiry, a CDN edge failing): that is not the registry's answer
        // to the client. A fresh URL from the registry, once; then the read has failed.
        if (storageRetried) {
          throw new StorageRefusedError(url, answer.status);
        }
        storageRetried = true;
        url = start;
        ({ authorization, answeredChallenge } = registryAsked);
        continue;
      }
      const challenge = answer.headers['www-authenticate'];
      if (answer.status === 401 && challenge !== undefined && !challenged) {
        challenged = true;
        const answered = await this.#auth.answer(registry, repository, challenge, signal);
        if (answered === undefined) {
          return answer;
        }
        authorization = answered;
        answeredChallenge = challenge;
        continue;
      }
      const location = answer.headers.location;
      if (REDIRECTS.has(answer.status) && location !== undefined && hop < MAX_REDIRECTIONS) {
        const next = new URL(location, url);
        if (url.origin === start.origin) {
          registryAsked = { authorization, answeredChallenge };
        }
        if (next.origin !== url.origin) {
          // Credentials are for the registry, never for the storage it redirects to; and a
          // refusal from that storage (an expired signed URL) is not the registry's answer to
          // the challenge.
          authorization = undefined;
          answeredChallenge = undefined;
        }
        url = next;
        continue;
      }
      return answeredChallenge === undefined ? answer : { ...answer, challenge: answeredChallenge };
    }
  }

  /** Closes idle connections and drops the idle blocks. */
  close(): void {
    this.#client.close();
    this.#idle.length = 0;
  }

  /**
   * One GET. A 200 (or a 206 when `range` is sent) resolves at its head, its body streaming
   * into the blocks; any other answer resolves once its body has been read (its first 64 KiB
   * kept), but one that is neither the blob nor a refusal (another 2xx: a 206 to a request
   * without a range) fails the request.
   */
  #get(
    url: URL,
    authorization: string | undefined,
    signal: AbortSignal,
    range: string | undefined,
  ): Promise<OpenedBlob> {
    const isBody = (status: number | undefined): boolean =>
      status === 200 || (range !== undefined && status === 206);
    const { timeouts, userAgent } = this.#options;
    const stop = new AbortController();
    const headersTimer = setTimeout(() => {
      stop.abort(
        new UpstreamTimeoutError(
          'HEADERS_TIMEOUT',
          504,
          `no response from ${url.host} in ${timeouts.headersMs} ms`,
        ),
      );
    }, timeouts.headersMs);
    const body = new LentBlocks(
      this.#blockBytes,
      this.#options.holdMs ?? BLOB_HOLD_MS,
      this.#options.firstBlockBytes ?? this.#blockBytes,
      {
        take: () => this.#idle.pop(),
        give: (block) => {
          if (this.#idle.length < MAX_IDLE_BLOCKS) {
            this.#idle.push(block);
          }
        },
        cancel: (reason) => stop.abort(reason),
      },
    );
    /** Thrown to stop reading an answer other than the blob once its body passes the bound. */
    const answerCut = new Error(`${url.host} answered with a body past ${MAX_ANSWER_BYTES} bytes`);
    return new Promise<OpenedBlob>((resolve, reject) => {
      let head: Omit<OpenedBlob, 'blocks' | 'cancel' | 'answer'> | undefined;
      /** The body of an answer other than 200, kept for the caller. */
      const answer: Buffer[] = [];
      let answerBytes = 0;
      const exchange = this.#client.get(
        url,
        {
          headers: {
            'user-agent': userAgent,
            ...(authorization === undefined ? {} : { authorization }),
            ...(range === undefined ? {} : { range }),
          },
          signal: AbortSignal.any([signal, stop.signal]),
          // Before the head the headers timeout bounds the wait; `idleMs` is the body's.
          timeoutMs: Math.max(timeouts.idleMs, timeouts.headersMs),
          bodyTimeoutMs: timeouts.idleMs,
          connectTimeoutMs: timeouts.connectMs,
          timeoutError: (kind) =>
            kind === 'connect'
              ? new UpstreamTimeoutError(
                  'CONNECT_TIMEOUT',
                  504,
                  `could not connect to ${url.host} in ${timeouts.connectMs} ms`,
                )
              : new UpstreamTimeoutError(
                  'IDLE_TIMEOUT',
                  504,
                  `${url.host} went quiet for ${timeouts.idleMs} ms`,
                ),
        },
        {
          onHead: (status, size, headers) => {
            clearTimeout(headersTimer);
            if (status >= 200 && status < 300 && !isBody(status)) {
              // Blob bytes perhaps, but not the ones asked for: never an answer for a client.
              throw new Error(
                `${url.host} answered ${String(status)} to a request for ${range ?? 'the whole blob'}`,
              );
            }
            head = { status, size, headers };
            if (isBody(status)) {
              resolve({
                ...head,
                answer: Buffer.alloc(0),
                blocks: body,
                cancel: (reason) => body.cancel(reason),
              });
            }
          },
          // The body of a 200 is read into its blocks directly, with no copy.
          bodyBuffer: () => (isBody(head?.status) ? body.room() : undefined),
          onBodyRead: (count) => body.filled(count),
          onBody: (bytes) => {
            if (isBody(head?.status)) {
              return body.write(bytes);
            }
            // A view valid only during this call.
            answer.push(Buffer.from(bytes.subarray(0, MAX_ANSWER_BYTES - answerBytes)));
            answerBytes += bytes.length;
            if (answerBytes > MAX_ANSWER_BYTES) {
              // Its start is enough to tell the answer (a CDN's or firewall's HTML page).
              throw answerCut;
            }
            return undefined;
          },
        },
      );
      exchange.then(
        () => {
          clearTimeout(headersTimer);
          body.end();
          if (head !== undefined && !isBody(head.status)) {
            resolve({
              ...head,
              answer: Buffer.concat(answer),
              blocks: body,
              cancel: () => undefined,
            });
          }
        },
        (error: unknown) => {
          clearTimeout(headersTimer);
          if (error === answerCut && head !== undefined) {
            // The answer's status and headers stand; its body is kept to its first 64 KiB.
            body.end();
            resolve({
              ...head,
              answer: Buffer.concat(answer),
              blocks: body,
              cancel: () => undefined,
            });
            return;
          }
          const failure = error instanceof Error ? error : new Error(String(error));
          body.fail(failure);
          // Before the head: the request failed. After it: the blocks throw.
          reject(failure);
        },
      );
    });
  }
}

/** The Range header for bytes `[from, until)` of a blob; undefined for the whole blob. */
export function blobRangeHeader(from: number, until: number | undefined): string | undefined {
  if (until !== undefined) {
    return `bytes=${String(from)}-${String(until - 1)}`;
  }
  return from > 0 ? `bytes=${String(from)}-` : undefined;
}

/** Where a body's blocks come from and go back to. */
interface BlockPool {
  take(): Buffer | undefined;
  give(block: Buffer): void;
  /** Stops the transfer. */
  cancel(reason: Error): void;
}

/**
 * A body copied into a few reused blocks and iterated block by block. The transfer pauses
 * while every block is in use (the caller has not asked for the next one yet).
 */
class LentBlocks implements AsyncIterableIterator<Buffer> {
  readonly #blockBytes: number;
  readonly #holdMs: number;
  /** Bytes after which the first block goes without filling. */
  readonly #firstBytes: number;
  /** Whether a block has been handed over yet. */
  #started = false;
  readonly #pool: BlockPool;
  /** Every block this body took, to give back at the end. */
  readonly #owned: Buffer[] = [];
  readonly #free: Buffer[] = [];
  /**
   * The block being filled. When the socket reads into its room (`room()`: a read's buffer is
   * chosen before the read), it stays the one filled until full, even after its first bytes
   * were handed over (`#handed`).
   */
  #current: Buffer | undefined;
  /** Whether the body is read into the blocks' room (`room()`), not copied (`write`). */
  #direct = false;
  #filled = 0;
  /** Bytes of the current block handed over already (a view each, in order). */
  #handed = 0;
  /** When the current block's bytes not yet handed over began to come (performance.now()). */
  #startedAt = 0;
  /** Filled parts handed over in order, with the block each belongs to. */
  readonly #ready: { block: Buffer; view: Buffer }[] = [];
  /** The block the caller holds now. */
  #lent: Buffer | undefined;
  /** The caller waiting in `next()`. */
  #waiter: ((result: IteratorResult<Buffer>) => void) | undefined;
  #waiterFailed: ((error: Error) => void) | undefined;
  /** The transfer waiting for a free block, and its pause (one, however many writes asked). */
  #space: (() => void) | undefined;
  #paused: Promise<void> | undefined;
  /** Hands a partly filled block over when the caller has waited the hold time. */
  #holdTimer: NodeJS.Timeout | undefined;
  #ended = false;
  #error: Error | undefined;
  #done = false;

  constructor(blockBytes: number, holdMs: number, firstBytes: number, pool: BlockPool) {
    this.#blockBytes = blockBytes;
    this.#holdMs = holdMs;
    this.#firstBytes = firstBytes;
    this.#pool = pool;
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Buffer> {
    return this;
  }

  /**
   * Copies body bytes (a view valid only now) into the blocks; a promise when the transfer must
   * wait for the caller to hand a block back.
   */
  write(bytes: Buffer): Promise<void> | undefined {
    let at = 0;
    while (at < bytes.length) {
      // There is one to take without going past BLOCKS_PER_BODY: the transfer pauses below
      // until there is, and a read (at most RAW_READ_BYTES) never needs two fresh blocks.
      const block = this.#current ?? this.#startBlock();
      const copied = bytes.copy(block, this.#filled, at);
      at += copied;
      this.#grew(block, copied);
    }
    return this.#paced();
  }

  /**
   * Where the next socket read may land: the free room of the block being filled, or
   * undefined when every block is taken (the transfer pauses then) or the body is over.
   */
  room(): Buffer | undefined {
    if (this.#done || this.#ended || this.#error !== undefined) {
      return undefined;
    }
    if (
      this.#current === undefined &&
      this.#free.length === 0 &&
      this.#owned.length >= BLOCKS_PER_BODY
    ) {
      return undefined;
    }
    this.#direct = true;
    const block = this.#current ?? this.#startBlock();
    return block.subarray(this.#filled);
  }

  /** `count` bytes were read into the room `room()` gave last; then as after `write`. */
  filled(count: number): Promise<void> | undefined {
    const block = this.#current;
    if (block !== undefined) {
      this.#grew(block, count);
    }
    return this.#paced();
  }

  /** Takes a block to fill. */
  #startBlock(): Buffer {
    const block = this.#takeBlock();
    this.#current = block;
    this.#filled = 0;
    this.#handed = 0;
    this.#startedAt = performance.now();
    return block;
  }

  /** `count` more bytes are in `block`: a full block (or the first bytes) goes to the caller. */
  #grew(block: Buffer, count: number): void {
    if (this.#filled === this.#handed) {
      this.#startedAt = performance.now();
    }
    this.#filled += count;
    if (this.#filled === block.length || (!this.#started && this.#filled >= this.#firstBytes)) {
      this.#handOver();
    }
  }

  /**
   * After bytes came: a waiting caller gets them in time; a promise while the next read could
   * need a block and none is free. A read into the room never goes past the block being filled;
   * a copied one (a body of unknown length) may need a fresh block whatever that one holds.
   */
  #paced(): Promise<void> | undefined {
    if (this.#waiter !== undefined) {
      this.#holdOrHandOver();
    }
    if (
      (this.#direct && this.#current !== undefined) ||
      this.#free.length > 0 ||
      this.#owned.length < BLOCKS_PER_BODY
    ) {
      return undefined;
    }
    this.#paused ??= new Promise<void>((resolve) => {
      this.#space = resolve;
    });
    return this.#paused;
  }

  /** The transfer ended: what is left is handed over, then the iteration ends. */
  end(): void {
    this.#ended = true;
    this.#handOver();
    this.#wake();
  }

  /**
   * The transfer failed: the caller gets what had arrived (a transfer resumed from the byte it
   * stopped at then asks for less again), then its next block throws `error`.
   */
  fail(error: Error): void {
    if (this.#error === undefined && !this.#done) {
      this.#handOver();
    }
    this.#error ??= error;
    this.#wake();
  }

  /** The caller gives up: the transfer stops and the blocks go back (except one it may hold). */
  cancel(reason: Error): void {
    this.fail(reason);
    this.#pool.cancel(reason);
    this.#finish(false);
  }

  next(): Promise<IteratorResult<Buffer>> {
    this.#giveBack();
    const ready = this.#ready.shift();
    if (ready !== undefined) {
      this.#lent = ready.block;
      return Promise.resolve({ value: ready.view, done: false });
    }
    if (this.#error !== undefined) {
      this.#finish(true);
      return Promise.reject(this.#error);
    }
    if (this.#ended) {
      this.#finish(true);
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise<IteratorResult<Buffer>>((resolve, reject) => {
      this.#waiter = resolve;
      this.#waiterFailed = reject;
      this.#holdOrHandOver();
    });
  }

  /** The caller stopped early (`break`, or a throw in its loop): the transfer is cancelled. */
  return(): Promise<IteratorResult<Buffer>> {
    this.cancel(new Error('the blob was not read to its end'));
    return Promise.resolve({ value: undefined, done: true });
  }

  #takeBlock(): Buffer {
    const block = this.#free.pop() ?? this.#pool.take() ?? Buffer.allocUnsafeSlow(this.#blockBytes);
    if (!this.#owned.includes(block)) {
      this.#owned.push(block);
    }
    return block;
  }

  /**
   * The caller waits: hands over the bytes of a partly filled block that has waited the hold
   * time, or makes sure they are handed over when it is up (the origin may send nothing more
   * for a while).
   */
  #holdOrHandOver(): void {
    if (this.#filled === this.#handed || this.#holdTimer !== undefined) {
      return;
    }
    const waited = performance.now() - this.#startedAt;
    if (waited >= this.#holdMs) {
      this.#handOver();
      return;
    }
    this.#holdTimer = setTimeout(() => {
      this.#holdTimer = undefined;
      if (this.#waiter !== undefined) {
        this.#handOver();
      }
    }, this.#holdMs - waited);
  }

  /**
   * Hands the current block's bytes not handed over yet to the caller; a full block is done
   * with, a partly filled one goes on filling (the socket may be reading into its room).
   */
  #handOver(): void {
    clearTimeout(this.#holdTimer);
    this.#holdTimer = undefined;
    const block = this.#current;
    if (block === undefined || this.#filled === this.#handed) {
      return;
    }
    this.#ready.push({ block, view: block.subarray(this.#handed, this.#filled) });
    this.#started = true;
    this.#handed = this.#filled;
    // A part-filled block read into directly may be the next read's target: it fills on.
    if (this.#filled === block.length || !this.#direct) {
      this.#current = undefined;
      this.#filled = 0;
      this.#handed = 0;
    }
    this.#wake();
  }

  /** Answers a caller waiting in `next()`. */
  #wake(): void {
    const waiter = this.#waiter;
    const failed = this.#waiterFailed;
    if (waiter === undefined || failed === undefined) {
      return;
    }
    const ready = this.#ready.length > 0;
    if (!ready && this.#error === undefined && !this.#ended) {
      return;
    }
    this.#waiter = undefined;
    this.#waiterFailed = undefined;
    this.next().then(waiter, failed);
  }

  /**
   * The caller is done with the view it held: its block is free again unless it is still being
   * filled or another view of it waits to be handed over. Then the transfer may go on.
   */
  #giveBack(): void {
    const lent = this.#lent;
    if (lent === undefined) {
      return;
    }
    this.#lent = undefined;
    if (lent === this.#current || this.#ready.some((ready) => ready.block === lent)) {
      return;
    }
    this.#free.push(lent);
    const space = this.#space;
    this.#space = undefined;
    this.#paused = undefined;
    space?.();
  }

  /** Gives the blocks back to the pool; `withLent`: the caller is done with the one it held. */
  #finish(withLent: boolean): void {
    if (this.#done) {
      return;
    }
    this.#done = true;
    clearTimeout(this.#holdTimer);
    this.#holdTimer = undefined;
    const space = this.#space;
    this.#space = undefined;
    this.#paused = undefined;
    space?.();
    for (const block of this.#owned) {
      // A block the caller may still be reading (or writing out) is left to the collector.
      if (withLent || block !== this.#lent) {
        this.#pool.give(block);
      }
    }
    this.#owned.length = 0;
    this.#free.length = 0;
    this.#ready.length = 0;
    this.#current = undefined;
  }
}
