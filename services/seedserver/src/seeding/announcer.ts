/**
 * Publishes a blob's progress at the seed: piece hashes first (agents verify against them),
 * then the seed's piece-have. Batched at a short interval so a fast origin does not turn into
 * one message per piece; the have always carries the full set, so a lost one costs nothing.
 */
import type { JetStreamClient } from '@nats-io/jetstream';
import {
  encodeMessage,
  pieceHashes,
  pieceHashesSubject,
  pieceHave,
  pieceHaveSubject,
  type PeerInfo,
} from '@shoal/proto';

import type { SeedBlob } from './seed-blob.js';

/** Hashes per piece-hashes message (the schema allows up to 1024). */
const HASHES_PER_MESSAGE = 512;

export class Announcer {
  readonly #js: JetStreamClient;
  readonly #self: PeerInfo;
  readonly #blob: SeedBlob;
  #published = 0;
  #lastHave = -1;
  #chain: Promise<void> = Promise.resolve();

  constructor(js: JetStreamClient, self: PeerInfo, blob: SeedBlob) {
    this.#js = js;
    this.#self = self;
    this.#blob = blob;
  }

  /** Publishes what changed since the last call; calls are serialised. */
  flush(): Promise<void> {
    // A failed publish fails this call only; the next one starts afresh.
    this.#chain = this.#chain.catch(() => undefined).then(() => this.#flush());
    return this.#chain;
  }

  /** Records that the hashes stream already holds every hash known now (after a restart). */
  hashesAlreadyPublished(): void {
    this.#published = this.#blob.ready;
  }

  /** Publishes every hash again (after the hashes stream lost them), then the have. */
  republish(): Promise<void> {
    this.#published = 0;
    this.#lastHave = -1;
    return this.flush();
  }

  /** Tells the swarm the seed no longer holds the blob (it failed verification). */
  async withdraw(): Promise<void> {
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

  async #flush(): Promise<void> {
    const blob = this.#blob;
    const digest = blob.digest.toString();
    const ready = blob.ready;
    while (this.#published < ready) {
      const first = this.#published;
      const hashes = blob.hashes.slice(first, Math.min(ready, first + HASHES_PER_MESSAGE));
      await this.#js.publish(
        pieceHashesSubject(digest),
        encodeMessage(pieceHashes, {
          type: 'piece-hashes',
          blob: digest,
          size: blob.size,
          pieceSize: blob.pieceSize,
          first,
          hashes,
        }),
        { msgID: `${blob.digest.hex}-${first}-${hashes.length}` },
      );
      this.#published = first + hashes.length;
    }
    const haveKey = blob.complete ? ready + 1 : ready;
    if (haveKey === this.#lastHave || ready === 0) {
      return;
    }
    await this.#js.publish(
      pieceHaveSubject(digest, this.#self.id),
      encodeMessage(pieceHave, {
        type: 'piece-have',
        blob: digest,
        peer: this.#self,
        pieces: [[0, ready]],
        complete: blob.complete,
        seed: true,
      }),
    );
    this.#lastHave = haveKey;
  }
}
