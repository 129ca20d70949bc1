/**
 * A blob read over several connections in stripes (`stripedBody`): from a real registry
 * behind its token flow (Debian's docker-registry and the test kit's token server), the bytes
 * in order, every byte asked once, and the memory it holds; from a small node:http stand-in,
 * how many stripes are asked at once and the faults (a stripe cut off, a stripe refused, a
 * registry that ignores Range).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { parseDigest, type Digest } from '@shoal/proto';
import {
  generateImage,
  makeTempDir,
  pushImage,
  startRegistry,
  startTokenServer,
  Teardown,
  type Registry,
} from '@shoal/testkit';

import {
  BlobReader,
  ORIGIN_RESUMES,
  RegistryAuth,
  stripedBody,
  stripedSize,
  UpstreamClient,
  type OpenedBlob,
  type StripeOptions,
  type UpstreamRegistry,
} from '../src/index.js';

const MiB = 1024 * 1024;
const timeouts = { connectMs: 5000, headersMs: 5000, idleMs: 5000 };
const repository = 'team/app';
const users = { seeder: { password: 'seed-pass', pull: ['*'], push: ['*'] } };

/** What a read of a striped body saw: its digest and size, and the memory its blocks were in. */
interface Drained {
  readonly digest: string;
  readonly bytes: number;
  readonly memory: Set<ArrayBufferLike>;
}

async function drain(
  blocks: AsyncIterable<Buffer>,
  each?: (block: Buffer) => Promise<void>,
): Promise<Drained> {
  const hash = createHash('sha256');
  const memory = new Set<ArrayBufferLike>();
  let bytes = 0;
  for await (const block of blocks) {
    hash.update(block);
    memory.add(block.buffer);
    bytes += block.length;
    await each?.(block);
  }
  return { digest: `sha256:${hash.digest('hex')}`, bytes, memory };
}

/** A blob of `size` random bytes, and its digest. */
function randomBlob(size: number): { bytes: Buffer; digest: Digest } {
  const bytes = randomBytes(size);
  return {
    bytes,
    digest: parseDigest(`sha256:${createHash('sha256').update(bytes).digest('hex')}`),
  };
}

/** Waits until `done()` holds, for 5 s at most (then fails). */
async function waitFor(done: () => boolean): Promise<void> {
  for (let waited = 0; !done(); waited += 20) {
    assert.ok(waited < 5000, 'not in 5 s');
    await sleep(20);
  }
}

/** One request the stand-in origin received: its range, and when it started and ended. */
interface Asked {
  readonly first: number;
  readonly last: number | undefined;
  ended: boolean;
}

/**
 * A stand-in registry serving `bytes` with Range (206), a little at a time so stripes overlap;
 * `fault(n, asked)` may answer the n-th request itself (returns true when it did).
 */
async function standIn(
  teardown: Teardown,
  bytes: Buffer,
  fault: (n: number, asked: Asked, response: ServerResponse) => boolean = () => false,
): Promise<{ origin: UpstreamRegistry; asked: Asked[]; concurrent: () => number }> {
  const asked: Asked[] = [];
  let open = 0;
  let most = 0;
  const server = createServer((request, response) => {
    const match = /^bytes=(\d+)-(\d*)$/.exec(request.headers.range ?? '');
    const first = Number(match?.[1] ?? 0);
    const last = match?.[2] === undefined || match[2] === '' ? undefined : Number(match[2]);
    const entry: Asked = { first, last, ended: false };
    asked.push(entry);
    open += 1;
    most = Math.max(most, open);
    response.on('close', () => {
      open -= 1;
      entry.ended = true;
    });
    if (fault(asked.length - 1, entry, response)) {
      return;
    }
    if (match === null) {
      response.writeHead(200, { 'content-length': bytes.length });
      response.end(bytes);
      return;
    }
    const end = Math.min(last ?? bytes.length - 1, bytes.length - 1);
    response.writeHead(206, {
      'content-length': end - first + 1,
      'content-range': `bytes ${String(first)}-${String(end)}/${String(bytes.length)}`,
    });
    // In four parts a few ms apart: the stripes asked at once are in flight together.
    const part = Math.ceil((end - first + 1) / 4);
    void (async () => {
      for (let at = first; at <= end && !response.destroyed; at += part) {
        const chunk = bytes.subarray(at, Math.min(at + part, end + 1));
        if (at + part > end) {
          // The last part ends the response with it: the client's next request on this
          // connection comes after the server has counted this one closed.
          response.end(chunk);
          return;
        }
        response.write(chunk);
        await sleep(2);
      }
      response.end();
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  teardown.add('stand-in origin', () => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(() => resolve()));
  });
  const url = `http://127.0.0.1:${String((server.address() as AddressInfo).port)}`;
  return { origin: { host: 'stand-in', url: new URL(url) }, asked, concurrent: () => most };
}

describe('stripedBody', () => {
  const teardown = new Teardown();
  let registry: Registry;
  let upstream: UpstreamRegistry;
  let layer: { digest: Digest; size: number };
  let auth: RegistryAuth;
  let anonymous: RegistryAuth;
  const readers: BlobReader[] = [];
  const reader = (as: RegistryAuth): BlobReader => {
    const made = new BlobReader(as, { timeouts, userAgent: 'shoal-test' });
    readers.push(made);
    return made;
  };

  /**
   * Opens the first stripe of `digest` at `origin` and hands it to `stripedBody`, every later
   * stripe asked through the same reader; `starts` notes the first byte of each stripe asked.
   */
  const openStriped = async (
    blobs: BlobReader,
    origin: UpstreamRegistry,
    digest: Digest,
    options: Partial<StripeOptions> & { stripeBytes: number; streams: number },
    starts: number[] = [],
  ): Promise<{ first: OpenedBlob; body: ReturnType<typeof stripedBody> }> => {
    const signal = AbortSignal.timeout(30_000);
    const first = await blobs.open(
      origin,
      repository,
      digest,
      signal,
      undefined,
      0,
      options.stripeBytes - 1,
    );
    const size = stripedSize(first);
    assert.ok(size !== undefined, `a 206 with the size, got ${String(first.status)}`);
    const body = stripedBody(first, {
      size,
      signal,
      fetch: (from, last, stop) => {
        starts.push(from);
        return blobs.open(origin, repository, digest, stop, undefined, from, last);
      },
      random: () => 0,
      ...options,
    });
    return { first, body };
  };

  before(async () => {
    const tokens = await startTokenServer(users);
    teardown.add('token server', () => tokens.stop());
    registry = await startRegistry({ tokenAuth: tokens });
    teardown.add('registry', () => registry.stop());
    const dir = await makeTempDir('striped');
    teardown.add('image', () => dir.remove());
    const image = await generateImage(join(dir.path, 'image'), {
      layerSizes: [9 * MiB + 54_321],
      seed: 'striped',
    });
    await pushImage(image, registry.host, repository, {
      destCreds: `seeder:${users.seeder.password}`,
    });
    const only = image.layers[0];
    assert.ok(only !== undefined);
    layer = { digest: parseDigest(only.digest), size: only.size };
    upstream = { host: registry.host, url: new URL(registry.url) };
    const client = new UpstreamClient(timeouts, 'shoal-test');
    teardown.add('upstream client', () => client.close());
    auth = new RegistryAuth(
      new Map([[registry.host, { username: 'seeder', password: users.seeder.password }]]),
      client,
      { trustedRealms: [new URL(tokens.realm).origin] },
    );
    anonymous = new RegistryAuth(new Map(), client);
  });

  after(async () => {
    for (const made of readers) {
      made.close();
    }
    await teardown.run();
  });

  it('reads a blob from a real registry in stripes, in order, each byte asked once', async () => {
    const before = (await registry.blobGets(layer.digest.toString())).length;
    const starts: number[] = [];
    const { body } = await openStriped(
      reader(auth),
      upstream,
      layer.digest,
      { stripeBytes: MiB, streams: 3 },
      starts,
    );
    const read = await drain(body.blocks);
    assert.equal(read.digest, layer.digest.toString());
    assert.equal(read.bytes, layer.size);
    // Ten stripes of 1 MiB: the first asked by the caller, nine by the body, in order.
    assert.deepEqual(
      starts,
      Array.from({ length: 9 }, (_, i) => (i + 1) * MiB),
    );
    const gets = (await registry.blobGets(layer.digest.toString())).slice(before);
    assert.equal(gets.length, 10);
    assert.ok(gets.every((get) => get.status === 206));
    assert.equal(
      gets.reduce((sum, get) => sum + get.written, 0),
      layer.size,
      'the registry sent the blob once',
    );
    // Handed on from no more stripe buffers than connections.
    assert.ok(read.memory.size <= 3, `${String(read.memory.size)} distinct buffers`);
  });

  it('keeps at most `streams` stripes asked, the one handed on included', async () => {
    const { bytes, digest } = randomBlob(6 * MiB + 777);
    const { origin, asked, concurrent } = await standIn(teardown, bytes);
    const starts: number[] = [];
    const { body } = await openStriped(
      reader(anonymous),
      origin,
      digest,
      { stripeBytes: 512 * 1024, streams: 4, wideAfterBytes: 256 * 1024 },
      starts,
    );
    let handedOn = 0;
    let mostAhead = 0;
    const read = await drain(body.blocks, async (block) => {
      // Stripes asked for beyond the one being handed on, when a block came (the first
      // stripe, asked by the caller, is not in `starts`).
      const current = Math.floor(handedOn / (512 * 1024));
      mostAhead = Math.max(mostAhead, 1 + starts.length - current);
      handedOn += block.length;
      await sleep(1);
    });
    assert.equal(read.bytes, bytes.length);
    assert.equal(read.digest, digest.toString());
    assert.equal(asked.length, 13, 'thirteen stripes of 512 KiB');
    assert.ok(concurrent() > 1, 'stripes in flight together');
    assert.ok(concurrent() <= 4, `${String(concurrent())} requests at once`);
    assert.ok(mostAhead <= 4, `${String(mostAhead)} stripes asked ahead`);
    assert.ok(read.memory.size <= 4, `${String(read.memory.size)} distinct buffers`);
  });

  it('resumes a stripe cut off from where it stopped, and asks again for one refused', async () => {
    const { bytes, digest } = randomBlob(3 * MiB + 99);
    let cut = false;
    let refused = false;
    const { origin, asked } = await standIn(teardown, bytes, (_n, entry, response) => {
      if (!cut && entry.first === MiB) {
        cut = true;
        // The second stripe: half of it, then the connection closes.
        response.writeHead(206, {
          'content-length': MiB,
          'content-range': `bytes ${String(entry.first)}-${String(entry.first + MiB - 1)}/${String(bytes.length)}`,
        });
        response.write(bytes.subarray(entry.first, entry.first + MiB / 2), () =>
          response.destroy(),
        );
        return true;
      }
      if (!refused && entry.first === 2 * MiB) {
        refused = true;
        response.writeHead(503, { 'content-type': 'text/plain' });
        response.end('busy');
        return true;
      }
      return false;
    });
    const resumed: number[] = [];
    const { body } = await openStriped(reader(anonymous), origin, digest, {
      stripeBytes: MiB,
      streams: 2,
      onResume: (at) => resumed.push(at),
    });
    const read = await drain(body.blocks);
    assert.equal(read.digest, digest.toString());
    assert.deepEqual(
      resumed.sort((a, b) => a - b),
      [MiB + MiB / 2, 2 * MiB].sort((a, b) => a - b),
    );
    const ranges = asked.map((entry) => `${String(entry.first)}-${String(entry.last)}`);
    // The cut stripe asked again from its middle to its end, the refused one asked again whole.
    assert.ok(ranges.includes(`${String(MiB + MiB / 2)}-${String(2 * MiB - 1)}`), ranges.join());
    assert.equal(
      ranges.filter((range) => range === `${String(2 * MiB)}-${String(3 * MiB - 1)}`).length,
      2,
    );
  });

  it('fails the body when a stripe cannot be had, and stops the other transfers', async () => {
    const { bytes, digest } = randomBlob(4 * MiB);
    const { origin, asked } = await standIn(teardown, bytes, (_n, entry, response) => {
      if (entry.first === 2 * MiB) {
        response.writeHead(503, { 'content-type': 'text/plain' });
        response.end('busy');
        return true;
      }
      return false;
    });
    const { body } = await openStriped(reader(anonymous), origin, digest, {
      stripeBytes: MiB,
      streams: 2,
    });
    await assert.rejects(drain(body.blocks), /answered 503/);
    const third = asked.filter((entry) => entry.first === 2 * MiB).length;
    assert.equal(third, 1 + ORIGIN_RESUMES, 'asked once and again five times');
    const count = asked.length;
    await sleep(100);
    assert.equal(asked.length, count, 'nothing asked after the failure');
  });

  it('asks again for the rest of a range answered short, and reads a range answered long only to its end', async () => {
    const { bytes, digest } = randomBlob(3 * MiB + 5);
    let short = false;
    let long = false;
    const { origin, asked } = await standIn(teardown, bytes, (_n, entry, response) => {
      const answer = (first: number, last: number): void => {
        response.writeHead(206, {
          'content-length': last - first + 1,
          'content-range': `bytes ${String(first)}-${String(last)}/${String(bytes.length)}`,
        });
        response.end(bytes.subarray(first, last + 1));
      };
      if (!short && entry.first === MiB) {
        // A server that caps ranges: a quarter of the stripe, cleanly.
        short = true;
        answer(MiB, MiB + MiB / 4 - 1);
        return true;
      }
      if (!long && entry.first === 2 * MiB) {
        // A server that sends the rest of the blob for a bounded range.
        long = true;
        answer(2 * MiB, bytes.length - 1);
        return true;
      }
      return false;
    });
    const resumed: number[] = [];
    const { body } = await openStriped(reader(anonymous), origin, digest, {
      stripeBytes: MiB,
      streams: 2,
      onResume: (at) => resumed.push(at),
    });
    const read = await drain(body.blocks);
    assert.equal(read.digest, digest.toString());
    assert.equal(read.bytes, bytes.length);
    assert.deepEqual(resumed, [MiB + MiB / 4]);
    const ranges = asked.map((entry) => `${String(entry.first)}-${String(entry.last)}`);
    assert.ok(ranges.includes(`${String(MiB + MiB / 4)}-${String(2 * MiB - 1)}`), ranges.join());
    // The long answer's stripe was not asked again; the last stripe was asked as usual.
    assert.equal(ranges.filter((range) => range.startsWith(`${String(2 * MiB)}-`)).length, 1);
    assert.ok(ranges.includes(`${String(3 * MiB)}-${String(bytes.length - 1)}`), ranges.join());
  });

  it('ends the body at once on an error `final` names, without asking again', async () => {
    const { bytes, digest } = randomBlob(4 * MiB);
    const { origin } = await standIn(teardown, bytes);
    class Refused extends Error {}
    const blobs = reader(anonymous);
    const tried: number[] = [];
    const { body } = await openStriped(blobs, origin, digest, {
      stripeBytes: MiB,
      streams: 2,
      fetch: async (from, last, signal) => {
        tried.push(from);
        if (from === 2 * MiB) {
          throw new Refused('the registry refused the stripe (429)');
        }
        return blobs.open(origin, repository, digest, signal, undefined, from, last);
      },
      final: (error) => error instanceof Refused,
    });
    await assert.rejects(drain(body.blocks), Refused);
    assert.equal(tried.filter((from) => from === 2 * MiB).length, 1, 'asked once');
    const count = tried.length;
    await sleep(100);
    assert.equal(tried.length, count, 'nothing asked after the refusal');
  });

  it('reads a blob of one stripe as the first answer comes, with no other request', async () => {
    const { bytes, digest } = randomBlob(700 * 1024);
    const { origin, asked } = await standIn(teardown, bytes);
    const { body } = await openStriped(reader(anonymous), origin, digest, {
      stripeBytes: MiB,
      streams: 4,
    });
    const read = await drain(body.blocks);
    assert.equal(read.digest, digest.toString());
    assert.deepEqual(
      asked.map((entry) => [entry.first, entry.last]),
      [[0, MiB - 1]],
    );
  });

  it('asks for one stripe only when cancelled before its first block', async () => {
    const { bytes, digest } = randomBlob(8 * MiB);
    const { origin, asked } = await standIn(teardown, bytes);
    const { body } = await openStriped(reader(anonymous), origin, digest, {
      stripeBytes: MiB,
      streams: 3,
    });
    body.cancel(new Error('no room'));
    await assert.rejects(drain(body.blocks), /no room/);
    await waitFor(() => asked.every((entry) => entry.ended));
    assert.equal(asked.length, 1);
  });

  it('stops every transfer when cancelled: the next block throws why', async () => {
    const { bytes, digest } = randomBlob(8 * MiB);
    const { origin, asked } = await standIn(teardown, bytes);
    const { body } = await openStriped(reader(anonymous), origin, digest, {
      stripeBytes: MiB,
      streams: 3,
    });
    const blocks = body.blocks[Symbol.asyncIterator]();
    const first = await blocks.next();
    assert.equal(first.done, false);
    body.cancel(new Error('seeding stopped'));
    await assert.rejects(
      (async () => {
        for (;;) {
          const next = await blocks.next();
          if (next.done === true) {
            return;
          }
        }
      })(),
      /seeding stopped/,
    );
    await waitFor(() => asked.every((entry) => entry.ended));
    assert.ok(asked.length <= 3, `${String(asked.length)} stripes asked`);
  });

  it('says a blob cannot be striped when the registry ignores Range or sends no size', async () => {
    const { bytes, digest } = randomBlob(2 * MiB);
    const { origin } = await standIn(teardown, bytes, (_n, _entry, response) => {
      response.writeHead(200, { 'content-length': bytes.length });
      response.end(bytes);
      return true;
    });
    const blobs = reader(anonymous);
    const whole = await blobs.open(
      origin,
      repository,
      digest,
      AbortSignal.timeout(5000),
      undefined,
      0,
      MiB - 1,
    );
    assert.equal(whole.status, 200);
    assert.equal(stripedSize(whole), undefined);
    const read = await drain(whole.blocks);
    assert.equal(read.digest, digest.toString(), 'the whole blob, read as one body');

    const { origin: sizeless } = await standIn(teardown, bytes, (_n, _entry, response) => {
      response.writeHead(206, {
        'content-length': MiB,
        'content-range': `bytes 0-${String(MiB - 1)}/*`,
      });
      response.end(bytes.subarray(0, MiB));
      return true;
    });
    const unsized = await blobs.open(
      sizeless,
      repository,
      digest,
      AbortSignal.timeout(5000),
      undefined,
      0,
      MiB - 1,
    );
    assert.equal(unsized.status, 206);
    assert.equal(stripedSize(unsized), undefined);
    unsized.cancel(new Error('not used'));
  });
});
