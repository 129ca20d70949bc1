/**
 * What the seed publishes while a blob streams in, on a real nats-server: the hashes of the
 * pieces on disk go out at once (no pause between announcements), one publication at a time
 * with what landed meanwhile gathered into the next; the have, which only trackers read, is
 * paced.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import type { JetStreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  decodeMessage,
  parseDigest,
  pieceHashes,
  pieceHashesSubject,
  pieceHave,
  pieceHaveSubject,
  STREAMS,
  type PeerInfo,
} from '@shoal/proto';
import { ensureStreams, jetStreamFor } from '@shoal/runtime/nats';
import { makeTempDir, startNats, type NatsServer } from '@shoal/testkit';

import { Announcer } from '../src/seeding/announcer.js';
import { SeedBlob } from '../src/seeding/seed-blob.js';

const MiB = 1024 * 1024;
const SELF: PeerInfo = { id: 'seed-a', url: 'http://127.0.0.1:1', zone: 'z' };

let nats: NatsServer;
let nc: NatsConnection;
let dir: { path: string; remove(): Promise<void> };

/** A 40-piece blob being seeded (256 KiB pieces), its pieces "on disk" as the test says. */
async function seedingBlob(name: string): Promise<SeedBlob> {
  const digest = parseDigest(`sha256:${createHash('sha256').update(name).digest('hex')}`);
  return SeedBlob.create(digest, 10 * MiB, join(dir.path, name));
}

function pieceHash(index: number): string {
  return createHash('sha256').update(`piece ${index}`).digest('hex');
}

/** Messages `stream` holds on `subject`. */
async function stored(jsm: JetStreamManager, stream: string, subject: string): Promise<number> {
  const info = await jsm.streams.info(stream, { subjects_filter: subject });
  return Object.values(info.state.subjects ?? {}).reduce((sum, n) => sum + n, 0);
}

/** Every piece index whose hash the stream holds for the blob, read as agents read them. */
async function hashedPieces(jsm: JetStreamManager, blob: SeedBlob): Promise<number[]> {
  const indexes: number[] = [];
  let seq = 0;
  for (;;) {
    const message = await jsm.direct.getMessage(STREAMS.pieces.name, {
      seq: seq + 1,
      next_by_subj: pieceHashesSubject(blob.digest.toString()),
    });
    if (message === null) {
      return indexes;
    }
    seq = message.seq;
    // Decoded against the schema, as agents decode them: the announcer does not validate
    // what it encodes (see `Announcer`).
    const decoded = decodeMessage(pieceHashes, message.data);
    assert.ok(decoded.ok, decoded.ok ? '' : decoded.error);
    const batch = decoded.value;
    batch.hashes.forEach((hash, i) => {
      assert.equal(hash, pieceHash(batch.first + i));
      indexes.push(batch.first + i);
    });
  }
}

/** Runs `test` with an announcer for a new blob; stops its pacing and drops the blob after. */
async function withAnnouncer(
  name: string,
  test: (blob: SeedBlob, announcer: Announcer, jsm: JetStreamManager) => Promise<void>,
): Promise<void> {
  const { js, jsm } = await jetStreamFor(nc);
  const blob = await seedingBlob(name);
  const announcer = new Announcer(js, jsm, SELF, blob);
  try {
    await test(blob, announcer, jsm);
  } finally {
    announcer.stopPacing();
    await blob.discard();
  }
}

describe('Announcer', () => {
  before(async () => {
    nats = await startNats();
    nc = await connect({ servers: nats.url });
    const { jsm } = await jetStreamFor(nc);
    await ensureStreams(jsm, [STREAMS.pieces, STREAMS.swarm], 1);
    dir = await makeTempDir('seed-announcer');
  });

  after(async () => {
    await nc.close();
    await nats.stop();
    await dir.remove();
  });

  it('publishes the hashes of each piece on disk at once, however many came before', () =>
    withAnnouncer('one by one', async (blob, announcer, jsm) => {
      for (let index = 0; index < 12; index++) {
        blob.piecesDone([pieceHash(index)]);
        // Resolves once the hashes of every piece on disk now are in the stream: no pause
        // between the announcements, however many came before (a paced announcer left the
        // later ones for a timer).
        await announcer.progress();
        assert.deepEqual(
          await hashedPieces(jsm, blob),
          Array.from({ length: index + 1 }, (_, i) => i),
          `after piece ${index}`,
        );
      }
      const subject = pieceHashesSubject(blob.digest.toString());
      assert.equal(await stored(jsm, STREAMS.pieces.name, subject), 12, 'one message each');
      // The have, paced, went with the first (its later ones wait for their pause).
      const haves = await stored(
        jsm,
        STREAMS.swarm.name,
        pieceHaveSubject(blob.digest.toString(), SELF.id),
      );
      assert.ok(haves >= 1 && haves <= 12, `${haves} haves for 12 announcements`);
      // The latest have decodes against the schema, as the trackers decode it, and names the
      // seed's prefix.
      const last = await jsm.streams.getMessage(STREAMS.swarm.name, {
        last_by_subj: pieceHaveSubject(blob.digest.toString(), SELF.id),
      });
      assert.ok(last !== null);
      const have = decodeMessage(pieceHave, last.data);
      assert.ok(have.ok, have.ok ? '' : have.error);
      assert.equal(have.value.seed, true);
      assert.equal(have.value.complete, false);
      assert.equal(have.value.peer.id, SELF.id);
      // The seed's prefix: from piece 0 to at most the 12 on disk.
      const [prefix] = have.value.pieces;
      assert.equal(have.value.pieces.length, 1);
      assert.ok(prefix !== undefined && prefix[0] === 0 && prefix[1] >= 1 && prefix[1] <= 12);
    }));

  it('gathers the pieces that land during a publication into the next one', () =>
    withAnnouncer('in a burst', async (blob, announcer, jsm) => {
      const published: Promise<void>[] = [];
      blob.piecesDone([pieceHash(0)]);
      published.push(announcer.progress());
      // While the first publication waits for its acknowledgement, nine more pieces land.
      await new Promise((resolve) => setImmediate(resolve));
      for (let index = 1; index < 10; index++) {
        blob.piecesDone([pieceHash(index)]);
        published.push(announcer.progress());
      }
      await Promise.all(published);
      assert.deepEqual(
        await hashedPieces(jsm, blob),
        Array.from({ length: 10 }, (_, i) => i),
      );
      // Ten announcements, at most two messages: the nine that landed behind the first went
      // together (all ten in one when the first had not started yet).
      const messages = await stored(
        jsm,
        STREAMS.pieces.name,
        pieceHashesSubject(blob.digest.toString()),
      );
      assert.ok(messages >= 1 && messages <= 2, `${messages} hash messages for 10 pieces`);
    }));
});
