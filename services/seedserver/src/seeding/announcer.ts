/**
 * Publishes a blob's progress at the seed: piece hashes first (agents verify against them),
 * then the seed's piece-have; the have always carries the full set, so a lost one costs
 * nothing.
 *
 * While a blob streams in, the hashes of the pieces on disk are published at once, without a
 * pause: agents following the blob's hash subject fetch a piece as soon as they hear of it,
 * and every pause here was time the cut-through stream stood still (a 10 MiB blob reached the
 * agent in three or four bursts, the last one at the end of the ingest). One publication is in
 * flight at a time; pieces that land meanwhile go out together in the next one, so a fast
 * origin costs one message per acknowledgement round trip, not one per piece. The have, which
 * only the trackers read (agents extend a seed's prefix from the hashes they hear), is paced:
 * the first at once (every agent of a cold pull waits on the seed becoming a holder), the next
 * ones at least 10, 20, 30 ... ms apart, at most `ANNOUNCE_MAX_GAP_MS`, about as many messages
 * as a fixed 100 ms interval for a large blob.
 *
 * Once the blob has verified, its incremental hash batches are replaced by one message per
 * `HASHES_PER_MESSAGE` pieces (the older ones purged), so an agent that reads a complete
 * blob's hashes later (a direct get per message) needs one request for most blobs.
 *
 * Once the blob has verified, and when a record key is configured, a signed `pieces-verified`
 * record goes to the blob's record subject after the last hashes: the seed's word that this
 * exact list of piece hashes is that of bytes that matched the digest, which spares an agent
 * holding the seed's public key, whose pieces all verified against the same list, its own hash
 * of the whole blob. One record per blob is kept (older ones purged).
 *
 * The hashes and the haves, sent as pieces land, are encoded without validating them again
 * (`encodeUnchecked`): they are made of values this process made or checked on the way in
 * (the digests it computed, or a manifest `SeedBlob.load` checked; the blob's digest; its size,
 * at most `MAX_BLOB_BYTES`, checked before the ingest; its own address, checked at start).
 * Validating them was about 3.5 % of the seed server's main thread on a cold pull; every
 * receiver still validates what it decodes.
 */
import type { KeyObject } from 'node:crypto';

import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import {
  encodeMessage,
  encodeUnchecked,
  pieceHashes,
  pieceListDigest,
  piecesVerified,
  piecesVerifiedSubject,
  pieceHashesSubject,
  pieceHave,
  pieceHaveSubject,
  signPiecesVerified,
  STREAMS,
  type PeerInfo,
} from '@shoal/proto';
import { markSpan } from '@shoal/runtime';

import type { SeedBlob } from './seed-blob.js';

/** Hashes per piece-hashes message: the schema's most (about 70 KiB of JSON). */
export const HASHES_PER_MESSAGE = 1024;
/** Step by which the pause between two piece-haves grows, in ms. */
const ANNOUNCE_GAP_STEP_MS = 10;
/** Longest pause between two piece-haves while pieces keep arriving, in ms. */
export const ANNOUNCE_MAX_GAP_MS = 100;

export class Announcer {
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #self: PeerInfo;
  readonly #blob: SeedBlob;
  /** The seed server's Ed25519 record key; without it no record is published. */
  readonly #recordKey: KeyObject | undefined;
  #published = 0;
  #lastHave = -1;
  /** Hash messages this run published (consolidation is needed when more than the minimum). */
  #messages = 0;
  #chain: Promise<void> = Promise.resolve();
  /** This run published the blob's `pieces-verified` record. */
  #recorded = false;
  /** The hash publication queued behind the one in flight, if any (see `progress`). */
  #queued: Promise<void> | undefined;
  /** Piece-haves sent while pacing, and when the last one started (performance.now()). */
  #paced = 0;
  #pacedAt = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(
    js: JetStreamClient,
    jsm: JetStreamManager,
    self: PeerInfo,
    blob: SeedBlob,
    recordKey?: KeyObject,
  ) {
    this.#js = js;
    this.#jsm = jsm;
    this.#self = self;
    this.#blob = blob;
    this.#recordKey = recordKey;
  }

  /** Publishes what changed since the last call; calls are serialised. */
  flush(): Promise<void> {
    // A failed publish fails this call only; the next one starts afresh.
    this.#chain = this.#chain.catch(() => undefined).then(() => this.#flush(true));
    return this.#chain;
  }

  /**
   * New pieces are on disk: publishes their hashes now, or right after the publication in
   * flight (everything on disk by then goes in one message), and the have now or when its
   * pause is over (one pending at a time). Resolves once the hashes of every piece on disk at
   * the call are published (rejects when that publication failed; the next call redoes it).
   */
  progress(): Promise<void> {
    this.#paceHave();
    if (this.#queued === undefined) {
      const queued = this.#chain
        .catch(() => undefined)
        .then(() => {
          this.#queued = undefined;
          return this.#flush(false);
        });
      this.#queued = queued;
      this.#chain = queued;
    }
    return this.#queued;
  }

  /** Sends the have now, or arms its timer for the end of the pause. */
  #paceHave(): void {
    if (this.#timer !== undefined) {
      return;
    }
    const gap = Math.min(ANNOUNCE_MAX_GAP_MS, this.#paced * ANNOUNCE_GAP_STEP_MS);
    const wait = this.#pacedAt + gap - performance.now();
    const announce = (): void => {
      this.#timer = undefined;
      this.#paced += 1;
      this.#pacedAt = performance.now();
      void this.flush().catch(() => undefined);
    };
    if (this.#paced === 0 || wait <= 0) {
      announce();
    } else {
      this.#timer = setTimeout(announce, wait);
    }
  }

  /**
   * The whole blob matched its digest in this run: with a record key, its `pieces-verified`
   * record is signed now (kept with the blob, and in its local manifest at the commit), and
   * the next `flush` publishes it after the last hashes. Only here is a record signed: a blob
   * found on disk at start republishes the record it was committed with, or none.
   */
  verified(): void {
    const blob = this.#blob;
    const key = this.#recordKey;
    if (key === undefined || blob.hashes.length !== blob.count) {
      return;
    }
    blob.record = signPiecesVerified(key, {
      type: 'pieces-verified',
      blob: blob.digest.toString(),
      size: blob.size,
      pieceSize: blob.pieceSize,
      hashes: pieceListDigest(blob.hashes),
    });
  }

  /** Stops the paced haves (the blob is in, or failed); `flush` still works. */
  stopPacing(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** Records that the hashes stream already holds every hash known now (after a restart). */
  hashesAlreadyPublished(): void {
    this.#published = this.#blob.ready;
  }

  /** Publishes every hash again (after the hashes stream lost them), then the have. */
  republish(): Promise<void> {
    this.#published = 0;
    this.#lastHave = -1;
    this.#recorded = false;
    return this.flush();
  }

  /**
   * Replaces a complete blob's incremental hash batches with the fewest messages (one per
   * `HASHES_PER_MESSAGE` pieces) and purges the older ones. A reader in the middle of the
   * stored batches meets the consolidated ones next; every batch carries its own indexes.
   */
  async consolidate(): Promise<void> {
    const blob = this.#blob;
    await this.#chain.catch(() => undefined);
    const needed = Math.ceil(blob.count / HASHES_PER_MESSAGE);
    if (!blob.complete || this.#messages <= needed) {
      return;
    }
    const digest = blob.digest.toString();
    let firstSeq: number | undefined;
    for (let first = 0; first < blob.count; first += HASHES_PER_MESSAGE) {
      const hashes = blob.hashes.slice(first, first + HASHES_PER_MESSAGE);
      const ack = await this.#publishHashes(
        first,
        hashes,
        `${blob.digest.hex}-all-${first}-${hashes.length}`,
      );
      firstSeq ??= ack;
    }
    if (firstSeq !== undefined) {
      await this.#jsm.streams.purge(STREAMS.pieces.name, {
        filter: pieceHashesSubject(digest),
        seq: firstSeq,
      });
    }
  }

  /** Tells the swarm the seed no longer holds the blob (it failed verification). */
  async withdraw(): Promise<void> {
    this.stopPacing();
    await this.#chain.catch(() => undefined);
    await this.#js.publish(
      pieceHaveSubject(this.#blob.digest.toString(), this.#self.id),
      encodeMessage(pieceHave, {
        type: 'piece-have',
        blob: this.#blob.digest.toString(),
        peer: this.#self,
        pieces: [],
        complete: false,
        seed: true,
      }),
    );
  }

  /** Publishes the hashes not published yet and, with `have`, the have when it changed. */
  async #flush(have: boolean): Promise<void> {
    const blob = this.#blob;
    const digest = blob.digest.toString();
    const ready = blob.ready;
    // The hashes and the have go out back to back and their acknowledgements are awaited
    // together: one round trip, not two, before the tracker hears of the pieces. The have may
    // be stored first (another stream); agents fetch no piece before its hash, so a have ahead
    // of its hashes only waits, and a failed flush is redone whole by the next one.
    const publishes: Promise<unknown>[] = [];
    for (let first = this.#published; first < ready; first += HASHES_PER_MESSAGE) {
      const hashes = blob.hashes.slice(first, Math.min(ready, first + HASHES_PER_MESSAGE));
      publishes.push(
        this.#publishHashes(first, hashes, `${blob.digest.hex}-${first}-${hashes.length}`),
      );
    }
    const haveKey = blob.complete ? ready + 1 : ready;
    const sendHave = have && haveKey !== this.#lastHave && ready > 0;
    if (sendHave) {
      publishes.push(
        this.#js.publish(
          pieceHaveSubject(digest, this.#self.id),
          encodeUnchecked(pieceHave, {
            type: 'piece-have',
            blob: digest,
            peer: this.#self,
            pieces: [[0, ready]],
            complete: blob.complete,
            seed: true,
          }),
        ),
      );
    }
    // After the hashes it vouches for, in the same round trip: an agent compares it with the
    // list of hashes it knows once it knows every one.
    const record =
      this.#recordKey !== undefined &&
      blob.record !== undefined &&
      !this.#recorded &&
      ready === blob.count;
    if (record) {
      publishes.push(this.#publishRecord());
    }
    await Promise.all(publishes);
    this.#published = Math.max(this.#published, ready);
    this.#lastHave = sendHave ? haveKey : this.#lastHave;
    this.#recorded ||= record;
  }

  /**
   * Publishes the blob's signed `pieces-verified` record on its subject, then purges the older
   * ones there: a restart or a seed request for a held blob publishes it again, and one is all
   * a reader needs. The message id (the record's own signature) makes a repeat within the
   * stream's duplicate window a no-op, and then no purge is needed either (a purge that failed
   * leaves an older record behind the newest: readers take the last).
   */
  async #publishRecord(): Promise<void> {
    const record = this.#blob.record;
    if (record === undefined) {
      return;
    }
    const subject = piecesVerifiedSubject(record.blob);
    const ack = await this.#js.publish(subject, encodeMessage(piecesVerified, record), {
      msgID: `${this.#blob.digest.hex}-verified-${record.sig.slice(0, 32)}`,
    });
    markSpan('pieces verified published');
    if (!ack.duplicate) {
      await this.#jsm.streams.purge(STREAMS.pieces.name, { filter: subject, keep: 1 });
    }
  }

  /** Publishes one batch of hashes; returns its stream sequence. */
  async #publishHashes(first: number, hashes: string[], msgID: string): Promise<number> {
    const blob = this.#blob;
    const ack = await this.#js.publish(
      pieceHashesSubject(blob.digest.toString()),
      encodeUnchecked(pieceHashes, {
        type: 'piece-hashes',
        blob: blob.digest.toString(),
        size: blob.size,
        pieceSize: blob.pieceSize,
        first,
        hashes,
      }),
      { msgID },
    );
    this.#messages += 1;
    markSpan('piece hashes published', { 'shoal.first': first, 'shoal.count': hashes.length });
    return ack.seq;
  }
}
