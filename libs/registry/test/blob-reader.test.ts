/**
 * BlobReader against a real registry that wants bearer tokens (Debian's docker-registry and the
 * test kit's token server): the bytes, the reuse of its blocks, answers other than a blob, and
 * a cancelled transfer. Redirects to storage on another origin and a registry that never
 * answers are small node:http servers: the registry here keeps blobs on its own disk and does
 * not redirect, and a silent server is a fault.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { parseDigest } from '@shoal/proto';
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
  isUnreachable,
  ORIGIN_RESUMES,
  RegistryAuth,
  readAnswer,
  ResumeRefusedError,
  resumingBody,
  UpstreamClient,
  type BlobReaderOptions,
  type OpenedBlob,
  type UpstreamRegistry,
} from '../src/index.js';

const MiB = 1024 * 1024;
const timeouts = { connectMs: 5000, headersMs: 5000, idleMs: 5000 };
const repository = 'team/app';
const users = { seeder: { password: 'seed-pass', pull: ['*'], push: ['*'] } };

/**
 * Reads every block, hashing it, and notes the distinct memory the blocks were lent in;
 * `hold` is awaited before each block is used (a slow caller).
 */
async function drain(
  opened: OpenedBlob,
  hold: (index: number) => Promise<void> = () => Promise.resolve(),
): Promise<{ digest: string; bytes: number; blocks: number; memory: Set<ArrayBufferLike> }> {
  const hash = createHash('sha256');
  const memory = new Set<ArrayBufferLike>();
  let bytes = 0;
  let blocks = 0;
  for await (const block of opened.blocks) {
    await hold(blocks);
    hash.update(block);
    memory.add(block.buffer);
    bytes += block.length;
    blocks += 1;
  }
  return { digest: `sha256:${hash.digest('hex')}`, bytes, blocks, memory };
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

describe('BlobReader', () => {
  const teardown = new Teardown();
  let registry: Registry;
  let upstream: UpstreamRegistry;
  let layer: { digest: string; size: number; path: string };
  let auth: RegistryAuth;
  const readers: BlobReader[] = [];
  const reader = (options: Partial<BlobReaderOptions> = {}, as = auth): BlobReader => {
    const made = new BlobReader(as, { timeouts, userAgent: 'shoal-test', ...options });
    readers.push(made);
    return made;
  };

  const openLayer = (blobs: BlobReader, from: UpstreamRegistry = upstream): Promise<OpenedBlob> =>
    blobs.open(from, repository, parseDigest(layer.digest), AbortSignal.timeout(30_000));
  /** A node:http server standing in for a registry, closed at the end. */
  const serve = async (
    host: string,
    handler: Parameters<typeof createServer>[1],
  ): Promise<UpstreamRegistry> => {
    const server = createServer(handler);
    const url = await listen(server);
    teardown.add(host, () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    });
    return { host, url: new URL(url) };
  };

  before(async () => {
    const tokens = await startTokenServer(users);
    teardown.add('token server', () => tokens.stop());
    registry = await startRegistry({ tokenAuth: tokens });
    teardown.add('registry', () => registry.stop());
    const dir = await makeTempDir('blob-reader');
    teardown.add('image', () => dir.remove());
    const image = await generateImage(join(dir.path, 'image'), {
      layerSizes: [5 * MiB + 12_345],
      seed: 'blob-reader',
    });
    await pushImage(image, registry.host, repository, {
      destCreds: `seeder:${users.seeder.password}`,
    });
    const first = image.layers[0];
    assert.ok(first !== undefined);
    const hex = parseDigest(first.digest).hex;
    layer = {
      digest: first.digest,
      size: first.size,
      path: join(image.layoutDir, 'blobs', 'sha256', hex),
    };
    upstream = { host: registry.host, url: new URL(registry.url) };
    const client = new UpstreamClient(timeouts, 'shoal-test');
    teardown.add('upstream client', () => client.close());
    auth = new RegistryAuth(
      new Map([[registry.host, { username: 'seeder', password: users.seeder.password }]]),
      client,
      { trustedRealms: [new URL(tokens.realm).origin] },
    );
  });

  after(async () => {
    for (const made of readers) {
      made.close();
    }
    await teardown.run();
  });

  it('reads a blob through the token flow, in blocks that go round', async () => {
    const blobs = reader({ blockBytes: 256 * 1024 });
    const opened = await openLayer(blobs);
    assert.equal(opened.status, 200);
    assert.equal(opened.size, layer.size);
    const read = await drain(opened);
    assert.equal(read.digest, layer.digest);
    assert.equal(read.bytes, layer.size);
    // 5 MiB in 256 KiB blocks is at least 21 of them, lent from three pieces of memory at most.
    assert.ok(read.blocks >= 21, `${read.blocks} blocks`);
    assert.ok(read.memory.size <= 3, `${read.memory.size} distinct blocks`);

    // A second blob reuses the blocks the first gave back. It may need one the first did not
    // (the socket ran further ahead of the reader under load), but the two together stay
    // within the same three pieces of memory.
    const again = await drain(await openLayer(blobs));
    assert.equal(again.digest, layer.digest);
    const reused = [...again.memory].filter((block) => read.memory.has(block));
    // Blocks come from the pool before any is made: as many as it holds are used again.
    assert.equal(reused.length, Math.min(read.memory.size, again.memory.size), 'blocks reused');
    const all = new Set([...read.memory, ...again.memory]);
    assert.ok(all.size <= 3, `${all.size} distinct blocks over both blobs`);
  });

  it('pauses the transfer while the caller is slow, in no more than three blocks', async () => {
    // Blocks smaller than a socket read are raised to its size (256 KiB): still three at most.
    const opened = await openLayer(reader({ blockBytes: 64 * 1024 }));
    // The first blocks are held a while: the rest of the body waits in the socket.
    const read = await drain(opened, (index) => (index < 5 ? sleep(20) : Promise.resolve()));
    assert.equal(read.digest, layer.digest);
    assert.ok(read.memory.size <= 3, `${read.memory.size} distinct blocks`);
  });

  it('reads the rest of a blob from a byte on (a resumed transfer), through the token flow', async () => {
    const bytes = await readFile(layer.path);
    const from = 3 * MiB + 7;
    const opened = await reader().open(
      upstream,
      repository,
      parseDigest(layer.digest),
      AbortSignal.timeout(30_000),
      undefined,
      from,
    );
    assert.equal(opened.status, 206);
    assert.equal(opened.headers['content-range'], `bytes ${from}-${layer.size - 1}/${layer.size}`);
    const read = await drain(opened);
    assert.equal(read.bytes, layer.size - from);
    const rest = `sha256:${createHash('sha256').update(bytes.subarray(from)).digest('hex')}`;
    assert.equal(read.digest, rest);
  });

  it('streams a whole-blob 200 to a request from a byte on as a body (the caller skips)', async () => {
    const ignoresRanges = await serve('no-ranges', (_request, response) => {
      response.writeHead(200, { 'content-length': 10 });
      response.end('0123456789');
    });
    const client = new UpstreamClient(timeouts, 'shoal-test');
    teardown.add('no-ranges client', () => client.close());
    const opened = await reader({}, new RegistryAuth(new Map(), client)).open(
      ignoresRanges,
      repository,
      parseDigest(layer.digest),
      AbortSignal.timeout(30_000),
      undefined,
      4,
    );
    assert.equal(opened.status, 200);
    assert.equal(opened.answer.length, 0);
    assert.equal((await drain(opened)).bytes, 10);
  });

  it('gives the answer of a blob the registry does not have, with no blocks', async () => {
    const missing = parseDigest(`sha256:${'0'.repeat(64)}`);
    const opened = await reader().open(upstream, repository, missing, AbortSignal.timeout(30_000));
    assert.equal(opened.status, 404);
    assert.equal((await drain(opened)).bytes, 0);
  });

  it("keeps a refusal's status and headers, and its body's first 64 KiB, however long its body", async () => {
    const page = Buffer.alloc(200 * 1024, 'refused by the edge firewall. ');
    for (const chunked of [false, true]) {
      const edge = await serve(`long-refusal-${String(chunked)}`, (_request, response) => {
        response.writeHead(403, {
          'content-type': 'text/html',
          'x-edge': 'waf',
          ...(chunked ? {} : { 'content-length': page.length }),
        });
        response.end(page);
      });
      const opened = await openLayer(reader(), edge);
      assert.equal(opened.status, 403, chunked ? 'chunked' : 'with a length');
      assert.equal(opened.headers['x-edge'], 'waf');
      assert.ok(opened.answer.equals(page.subarray(0, 64 * 1024)), 'the first 64 KiB');
      assert.equal((await drain(opened)).bytes, 0, 'no blocks');
    }
  });

  it('sends a forwarded Authorization as it is and hands a challenge back with its body', async () => {
    const blobs = reader();
    const digest = parseDigest(layer.digest);
    // No credentials forwarded: the registry's 401, challenge and OCI error body, unanswered
    // (the reader has credentials of its own, which a forwarded request never uses).
    const refused = await blobs.open(upstream, repository, digest, AbortSignal.timeout(30_000), {
      authorization: undefined,
    });
    assert.equal(refused.status, 401);
    assert.match(refused.headers['www-authenticate'] ?? '', /^Bearer realm=/);
    const body = JSON.parse(refused.answer.toString('utf8')) as { errors: { code: string }[] };
    assert.equal(body.errors[0]?.code, 'UNAUTHORIZED');
    assert.equal((await drain(refused)).bytes, 0);

    // The client's own token: the blob.
    const token = auth.current(upstream, repository);
    assert.ok(token !== undefined, 'the token flow ran in the tests before');
    const opened = await blobs.open(upstream, repository, digest, AbortSignal.timeout(30_000), {
      authorization: token,
    });
    assert.equal(opened.status, 200);
    assert.equal(opened.answer.length, 0);
    assert.equal((await drain(opened)).digest, layer.digest);
  });

  it('stops the transfer when cancelled: the next block throws why', async () => {
    const opened = await openLayer(reader({ blockBytes: 64 * 1024 }));
    const first = await opened.blocks.next();
    assert.equal(first.done, false);
    opened.cancel(new Error('enough'));
    await assert.rejects(opened.blocks.next(), /enough/);
  });

  it('keeps the challenge it answered when the retry is refused without one', async () => {
    let realm = '';
    const bare = await serve('bare-403', (request, response) => {
      if (request.url?.startsWith('/token') === true) {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(JSON.stringify({ token: 'anonymous', expires_in: 300 }));
        return;
      }
      if (request.headers.authorization === 'Bearer anonymous') {
        response.writeHead(403, { 'content-length': 2 });
        response.end('{}');
        return;
      }
      response.writeHead(401, { 'www-authenticate': realm, 'content-length': 2 });
      response.end('{}');
    });
    realm = `Bearer realm="${bare.url.origin}/token",service="test"`;
    const client = new UpstreamClient(timeouts, 'shoal-test');
    teardown.add('bare client', () => client.close());
    const basic = new RegistryAuth(
      new Map([[bare.host, { username: 'seeder', password: 'bare-pass' }]]),
      client,
    );
    const opened = await openLayer(reader({}, basic), bare);
    assert.equal(opened.status, 403);
    assert.equal(opened.headers['www-authenticate'], undefined);
    assert.equal(opened.challenge, realm, 'the challenge answered');
    assert.deepEqual(basic.refusal(bare, opened.challenge), {
      cause: 'realm-not-trusted',
      realm: bare.url.origin,
    });
  });

  it('follows a redirect to storage on another origin without the credentials', async () => {
    const bytes = await readFile(layer.path);
    const seen: IncomingHttpHeaders[] = [];
    const storage = await serve('storage', (request, response) => {
      seen.push(request.headers);
      response.writeHead(200, { 'content-length': bytes.length });
      response.end(bytes);
    });
    // Another origin: the same server by another name.
    const elsewhere = storage.url.href.replace('127.0.0.1', 'localhost');
    const front = await serve('front', (request, response) => {
      seen.push(request.headers);
      response.writeHead(307, { location: `${elsewhere}data`, 'content-length': 0 });
      response.end();
    });
    const client = new UpstreamClient(timeouts, 'shoal-test');
    teardown.add('front client', () => client.close());
    const basic = new RegistryAuth(
      new Map([['front', { username: 'seeder', password: 'front-pass' }]]),
      client,
    );
    const opened = await openLayer(reader({}, basic), front);
    assert.equal(opened.status, 200);
    assert.equal((await drain(opened)).digest, layer.digest);
    assert.equal(seen.length, 2);
    assert.match(seen[0]?.authorization ?? '', /^Basic /);
    assert.equal(seen[1]?.authorization, undefined);
  });

  it('follows storage that redirects again (a regional endpoint, a CDN chain), credentials left behind', async () => {
    // registry →307→ storage A →307→ storage B, which serves: three origins (B is another port).
    const bytes = await readFile(layer.path);
    const seen: { readonly host: string; readonly authorization: string | undefined }[] = [];
    const storageB = await serve('storage-b', (request, response) => {
      seen.push({ host: 'b', authorization: request.headers.authorization });
      response.writeHead(200, { 'content-length': bytes.length });
      response.end(bytes);
    });
    const storageA = await serve('storage-a', (request, response) => {
      seen.push({ host: 'a', authorization: request.headers.authorization });
      response.writeHead(307, { location: `${storageB.url.href}regional`, 'content-length': 0 });
      response.end();
    });
    const elsewhere = storageA.url.href.replace('127.0.0.1', 'localhost');
    const front = await serve('chain-front', (request, response) => {
      seen.push({ host: 'registry', authorization: request.headers.authorization });
      response.writeHead(307, { location: `${elsewhere}global`, 'content-length': 0 });
      response.end();
    });
    const client = new UpstreamClient(timeouts, 'shoal-test');
    teardown.add('chain client', () => client.close());
    const basic = new RegistryAuth(
      new Map([['chain-front', { username: 'seeder', password: 'front-pass' }]]),
      client,
    );
    const opened = await openLayer(reader({}, basic), front);
    assert.equal(opened.status, 200);
    assert.equal((await drain(opened)).digest, layer.digest);
    const response = await client.request({
      registry: front,
      method: 'GET',
      path: `/v2/${repository}/blobs/${layer.digest}`,
      headers: { authorization: 'Bearer secret' },
      signal: AbortSignal.timeout(10_000),
    });
    assert.equal(response.status, 200);
    const hash = createHash('sha256');
    for await (const chunk of response.body) {
      hash.update(chunk as Buffer);
    }
    assert.equal(`sha256:${hash.digest('hex')}`, layer.digest);
    assert.deepEqual(
      seen.map((asked) => asked.host),
      ['registry', 'a', 'b', 'registry', 'a', 'b'],
    );
    assert.match(seen[0]?.authorization ?? '', /^Basic /);
    assert.equal(seen[3]?.authorization, 'Bearer secret');
    assert.deepEqual(
      seen.filter((asked) => asked.host !== 'registry').map((asked) => asked.authorization),
      [undefined, undefined, undefined, undefined],
    );
  });

  it("does not take storage's refusal after a redirect for the registry's answer", async () => {
    // An expired signed URL: the storage's 403 says nothing of the registry's challenge, nor
    // of the client's right to read; the registry is asked for a fresh URL once, and a storage
    // that refuses that one too is the registry failing.
    let storageAsked = 0;
    const storage = await serve('signed-storage', (_request, response) => {
      storageAsked += 1;
      response.writeHead(403, { 'content-length': 2 });
      response.end('{}');
    });
    const elsewhere = storage.url.href.replace('127.0.0.1', 'localhost');
    let realm = '';
    const front = await serve('signed-front', (request, response) => {
      if (request.url?.startsWith('/token') === true) {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(JSON.stringify({ token: 'anonymous', expires_in: 300 }));
        return;
      }
      if (request.headers.authorization === 'Bearer anonymous') {
        response.writeHead(307, { location: `${elsewhere}data`, 'content-length': 0 });
        response.end();
        return;
      }
      response.writeHead(401, { 'www-authenticate': realm, 'content-length': 2 });
      response.end('{}');
    });
    realm = `Bearer realm="${front.url.origin}/token",service="test"`;
    const client = new UpstreamClient(timeouts, 'shoal-test');
    teardown.add('signed client', () => client.close());
    const anonymous = new RegistryAuth(new Map(), client);
    await assert.rejects(openLayer(reader({}, anonymous), front), (error: Error) => {
      assert.equal(error.name, 'StorageRefusedError');
      assert.match(error.message, /storage localhost:\d+ answered 403/);
      return true;
    });
    assert.equal(storageAsked, 2, 'the expired URL, then the fresh one');
  });

  it('asks the registry again when its storage refuses a signed URL (ranged reads too)', async () => {
    // The first signed URL has expired by the time it is used; the second is good.
    const storageAsked: { readonly authorization: string | undefined; readonly url: string }[] = [];
    const storage = await serve('expiring-storage', (request, response) => {
      storageAsked.push({ authorization: request.headers.authorization, url: request.url ?? '' });
      if (request.url?.endsWith('sig=1') === true) {
        response.writeHead(403, { 'content-length': 2 });
        response.end('{}');
        return;
      }
      response.writeHead(206, { 'content-range': 'bytes 2-4/10', 'content-length': 3 });
      response.end('abc');
    });
    let signed = 0;
    const front = await serve('expiring-front', (_request, response) => {
      signed += 1;
      const location = `${storage.url.href.replace('127.0.0.1', 'localhost')}blob?sig=${signed}`;
      response.writeHead(307, { location, 'content-length': 0 });
      response.end();
    });
    const client = new UpstreamClient(timeouts, 'shoal-test');
    teardown.add('expiring client', () => client.close());
    const response = await client.request({
      registry: front,
      method: 'GET',
      path: `/v2/${repository}/blobs/${layer.digest}`,
      headers: { authorization: 'Bearer secret', range: 'bytes=2-4' },
      signal: AbortSignal.timeout(10_000),
    });
    assert.equal(response.status, 206);
    assert.equal((await readAnswer(response)).body.toString(), 'abc');
    assert.equal(signed, 2, 'a fresh URL from the registry');
    assert.deepEqual(
      storageAsked.map((asked) => asked.url),
      ['/blob?sig=1', '/blob?sig=2'],
    );
    assert.ok(storageAsked.every((asked) => asked.authorization === undefined));
  });

  it('resumes past 4 GiB with the exact offset', async () => {
    // A 5 GiB blob broken off near its end: the offset is past 32 bits.
    const from = 5 * 1024 * MiB;
    let asked: string | undefined;
    const big = await serve('big-blob', (request, response) => {
      asked = request.headers.range;
      response.writeHead(206, {
        'content-range': `bytes ${from}-${from + 2}/${from + 3}`,
        'content-length': 3,
      });
      response.end('xyz');
    });
    const opened = await reader({}).open(
      big,
      repository,
      parseDigest(layer.digest),
      AbortSignal.timeout(10_000),
      { authorization: undefined },
      from,
    );
    assert.equal(asked, 'bytes=5368709120-');
    assert.equal(opened.status, 206);
    const body: Buffer[] = [];
    for await (const block of opened.blocks) {
      body.push(Buffer.from(block));
    }
    assert.equal(Buffer.concat(body).toString(), 'xyz');
  });

  it('hands over the first block once it holds firstBlockBytes, its rest once full, and whole blocks after it', async () => {
    const first = 256 * 1024;
    // No partial block for a slow moment of this machine: only the first goes early.
    const opened = await openLayer(reader({ firstBlockBytes: first, holdMs: 60_000 }));
    const lengths: number[] = [];
    const hash = createHash('sha256');
    for await (const block of opened.blocks) {
      lengths.push(block.length);
      hash.update(block);
    }
    assert.equal(`sha256:${hash.digest('hex')}`, layer.digest);
    // The read that brings the first block past 256 KiB hands it over; the rest of that
    // block follows once full, then whole blocks.
    const [head, ...rest] = lengths;
    assert.ok(head !== undefined && head >= first && head <= MiB, `first block ${head}`);
    const whole = head === MiB ? rest : rest.slice(1);
    assert.equal(head === MiB ? MiB : head + (rest[0] ?? 0), MiB, `then its rest: ${rest[0]}`);
    assert.ok(
      whole.slice(0, -1).every((length) => length === MiB),
      `then whole blocks: ${whole.join(', ')}`,
    );
  });

  it('hands over what a slow origin has sent once the caller has waited the hold time', async () => {
    const bytes = await readFile(layer.path);
    const head = 100 * 1024;
    let restSent = false;
    const slow = await serve('slow', (_request, response) => {
      response.writeHead(200, { 'content-length': bytes.length });
      response.write(bytes.subarray(0, head));
      setTimeout(() => {
        restSent = true;
        response.end(bytes.subarray(head));
      }, 500);
    });
    const opened = await openLayer(reader({ holdMs: 50 }), slow);
    const first = await opened.blocks.next();
    if (first.done === true) {
      assert.fail('no block');
    }
    const block: Buffer = first.value;
    // The first 100 KiB, not a whole 1 MiB block, and before the rest was sent.
    assert.equal(block.length, head);
    assert.equal(restSent, false);
    const hash = createHash('sha256').update(block);
    for await (const next of opened.blocks) {
      hash.update(next);
    }
    assert.equal(`sha256:${hash.digest('hex')}`, layer.digest);
  });

  it('keeps every byte in place while a dribbling origin has its part-filled blocks handed over', async () => {
    // Reads land in the block being filled, chosen before each read: a block handed over
    // part-filled (the hold time) keeps filling, and none is reused while a view of it is out.
    const bytes = await readFile(layer.path);
    const end = Math.min(bytes.length, 3 * MiB + 12_345);
    let turn = 0;
    const dribbling = await serve('dribbling', (_request, response) => {
      response.writeHead(200, { 'content-length': bytes.length });
      let at = 0;
      const send = (): void => {
        if (at >= end) {
          response.end(bytes.subarray(at));
          return;
        }
        // Sizes from 1 byte to 200 KiB, pauses of 0 to 4 ms: many part-filled hand-overs.
        turn += 1;
        const size = 1 + ((turn * 7919) % (200 * 1024));
        response.write(bytes.subarray(at, Math.min(end, at + size)));
        at = Math.min(end, at + size);
        setTimeout(send, turn % 5);
      };
      send();
    });
    const opened = await openLayer(reader({ holdMs: 1 }), dribbling);
    const hash = createHash('sha256');
    let views = 0;
    let count = 0;
    for await (const block of opened.blocks) {
      hash.update(block);
      views += 1;
      count += block.length;
      // A caller slow now and then: the transfer goes on meanwhile.
      if (views % 3 === 0) {
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    }
    assert.equal(count, bytes.length);
    assert.equal(`sha256:${hash.digest('hex')}`, layer.digest);
    assert.ok(views > 8, `${views} hand-overs`);
  });

  it('keeps a chunked body to three blocks while the caller is slow', async () => {
    // No Content-Length: the body is copied into the blocks (never read into them), and a slow
    // caller pauses the transfer rather than have it take a block per read.
    const bytes = await readFile(layer.path);
    const chunked = await serve('chunked', (_request, response) => {
      response.writeHead(200);
      for (let at = 0; at < bytes.length; at += 50_000) {
        response.write(bytes.subarray(at, Math.min(bytes.length, at + 50_000)));
      }
      response.end();
    });
    const opened = await openLayer(reader(), chunked);
    const hash = createHash('sha256');
    const blocks = new Set<ArrayBufferLike>();
    let views = 0;
    for await (const block of opened.blocks) {
      hash.update(block);
      blocks.add(block.buffer);
      views += 1;
      if (views === 1) {
        await new Promise((resolve) => setTimeout(resolve, 300));
      }
    }
    assert.equal(`sha256:${hash.digest('hex')}`, layer.digest);
    assert.ok(blocks.size <= 3, `${blocks.size} blocks for ${views} views`);
  });

  it('fails the blocks when the origin closes the connection before the end, after every byte it sent', async () => {
    const bytes = await readFile(layer.path);
    // Not a whole number of blocks: the part-filled last block is handed over too.
    const sent = 2 * MiB + 1234;
    const cut = await serve('cut', (_request, response) => {
      response.writeHead(200, { 'content-length': bytes.length });
      response.write(bytes.subarray(0, sent), () => response.destroy());
    });
    const opened = await openLayer(reader(), cut);
    assert.equal(opened.size, bytes.length);
    const hash = createHash('sha256');
    let received = 0;
    await assert.rejects(async () => {
      for await (const block of opened.blocks) {
        hash.update(block);
        received += block.length;
      }
    }, /closed early|ended early/);
    assert.equal(received, sent, 'what arrived before the cut is handed over');
    assert.equal(
      hash.digest('hex'),
      createHash('sha256').update(bytes.subarray(0, sent)).digest('hex'),
    );
  });

  /**
   * A stand-in origin whose n-th request gets `script[n]` (the last one after that): `cut`
   * sends a 200 and closes after 2 MiB + 1234 bytes, `whole` a 200 of every byte whatever
   * the Range, `range` a proper 206, `capped` a 206 of at most 256 KiB from the byte asked for
   * (a CDN capping its ranges), `unavailable` a 503, `reset` closes with no answer.
   */
  const scripted = async (
    host: string,
    bytes: Buffer,
    script: readonly ('cut' | 'whole' | 'range' | 'capped' | 'unavailable' | 'reset')[],
  ): Promise<{ origin: UpstreamRegistry; ranges: (string | undefined)[] }> => {
    const ranges: (string | undefined)[] = [];
    const origin = await serve(host, (request, response) => {
      const step = script[Math.min(ranges.length, script.length - 1)];
      ranges.push(request.headers.range);
      const from = Number(/^bytes=(\d+)-$/.exec(request.headers.range ?? '')?.[1] ?? 0);
      if (step === 'cut') {
        response.writeHead(200, { 'content-length': bytes.length });
        response.write(bytes.subarray(0, 2 * MiB + 1234), () => response.destroy());
      } else if (step === 'whole') {
        response.writeHead(200, { 'content-length': bytes.length });
        response.end(bytes);
      } else if (step === 'range') {
        response.writeHead(206, {
          'content-length': bytes.length - from,
          'content-range': `bytes ${String(from)}-${String(bytes.length - 1)}/${String(bytes.length)}`,
        });
        response.end(bytes.subarray(from));
      } else if (step === 'capped') {
        const end = Math.min(bytes.length, from + 256 * 1024);
        response.writeHead(206, {
          'content-length': end - from,
          'content-range': `bytes ${String(from)}-${String(end - 1)}/${String(bytes.length)}`,
        });
        response.end(bytes.subarray(from, end));
      } else if (step === 'unavailable') {
        response.writeHead(503, { 'content-type': 'text/plain' });
        response.end('busy');
      } else {
        request.socket.destroy();
      }
    });
    return { origin, ranges };
  };

  /**
   * The blob through `resumingBody` from `origin` (from byte `start` on, when given: the bytes
   * before it are hashed from the file, as another source gave them): its digest, and the
   * bytes resumed at.
   */
  const readResuming = async (
    origin: UpstreamRegistry,
    start = 0,
    fromGiven = start > 0,
  ): Promise<{ digest: string; resumedAt: number[] }> => {
    const client = new UpstreamClient(timeouts, 'shoal-test');
    teardown.add(`${origin.host} client`, () => client.close());
    const blobs = reader({}, new RegistryAuth(new Map(), client));
    const signal = AbortSignal.timeout(30_000);
    const digest = parseDigest(layer.digest);
    const resumedAt: number[] = [];
    const opened = await blobs.open(origin, repository, digest, signal, undefined, start);
    const body = resumingBody(opened, {
      signal,
      reopen: (from) => blobs.open(origin, repository, digest, signal, undefined, from),
      onResume: (at) => resumedAt.push(at),
      random: () => 0,
      ...(fromGiven ? { from: { byte: start, size: layer.size } } : {}),
    });
    const hash = createHash('sha256');
    if (start > 0) {
      hash.update((await readFile(layer.path)).subarray(0, start));
    }
    for await (const block of body.blocks) {
      hash.update(block);
    }
    return { digest: `sha256:${hash.digest('hex')}`, resumedAt };
  };

  it("reads a blob from a byte on (the rest of another source's read), a 206 or a whole 200, resuming as from the start", async () => {
    const bytes = await readFile(layer.path);
    const start = MiB + 77;
    const cases = [
      { script: ['range'], resumedAt: [] },
      { script: ['whole'], resumedAt: [] },
      // A whole 200 cut at 2 MiB + 1234: resumed from there, past the byte it started at.
      { script: ['cut', 'range'], resumedAt: [2 * MiB + 1234] },
    ] as const;
    for (const { script, resumedAt } of cases) {
      const { origin, ranges } = await scripted(`from-byte-${script.join('-')}`, bytes, script);
      const read = await readResuming(origin, start);
      assert.equal(read.digest, layer.digest, script.join(', '));
      assert.equal(ranges[0], `bytes=${String(start)}-`);
      assert.deepEqual(read.resumedAt, resumedAt, script.join(', '));
    }
    // A 206 from another byte is refused, not read as the rest.
    const wrong = await serve('from-wrong-byte', (_request, response) => {
      response.writeHead(206, {
        'content-length': bytes.length - 5,
        'content-range': `bytes 5-${String(bytes.length - 1)}/${String(bytes.length)}`,
      });
      response.end(bytes.subarray(5));
    });
    await assert.rejects(
      readResuming(wrong, start),
      /reading from byte \d+: the origin answered 206/,
    );
    // From byte 0 too: a 200 of another length is not the blob.
    const short = await serve('from-zero-other-length', (_request, response) => {
      response.writeHead(200, { 'content-length': 1000 });
      response.end(bytes.subarray(0, 1000));
    });
    await assert.rejects(
      readResuming(short, 0, true),
      /reading from byte 0: the origin answered 200 of 1000 bytes/,
    );
  });

  /**
   * How the n-th request for a part of the layer is answered: `part` a 206 of it; `cut` a 206
   * that breaks off 1 MiB in; `short` a 206 of its first 256 KiB only (a CDN capping ranges);
   * `foreign` a 206 of a blob one byte longer; `whole` a 200 of the blob; `whole-to-end` a
   * 200 that breaks off right after the part's last byte (`until`); `refused` a 401 (a token
   * expired); `unavailable` a 503.
   */
  type PartStep =
    'part' | 'cut' | 'short' | 'foreign' | 'whole' | 'whole-to-end' | 'refused' | 'unavailable';
  /** The largest answer of a `short` step, in bytes. */
  const CAP = 256 * 1024;

  /** An origin answering the layer's parts by `script`; each request's Range goes to `ranges`. */
  const partOrigin = async (
    name: string,
    script: readonly PartStep[],
    until: number,
    ranges: (string | undefined)[],
  ): Promise<UpstreamRegistry> => {
    const bytes = await readFile(layer.path);
    return serve(name, (request, response) => {
      const step = script[Math.min(ranges.length, script.length - 1)];
      ranges.push(request.headers.range);
      const match = /^bytes=(\d+)-(\d+)$/.exec(request.headers.range ?? '');
      if (step === 'refused') {
        response.writeHead(401, { 'content-type': 'application/json' });
        response.end('{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}');
        return;
      }
      if (step === 'unavailable') {
        response.writeHead(503, { 'content-type': 'text/plain' });
        response.end('busy');
        return;
      }
      if (step === 'whole' || step === 'whole-to-end' || match === null) {
        response.writeHead(200, { 'content-length': bytes.length });
        if (step === 'whole-to-end') {
          response.write(bytes.subarray(0, until), () => response.destroy());
        } else {
          response.end(bytes);
        }
        return;
      }
      const first = Number(match[1]);
      const last =
        step === 'short' ? Math.min(first + CAP, Number(match[2]) + 1) - 1 : Number(match[2]);
      const total = step === 'foreign' ? bytes.length + 1 : bytes.length;
      response.writeHead(206, {
        'content-length': last - first + 1,
        'content-range': `bytes ${String(first)}-${String(last)}/${String(total)}`,
      });
      if (step === 'cut') {
        response.write(bytes.subarray(first, first + MiB), () => response.destroy());
      } else {
        response.end(bytes.subarray(first, last + 1));
      }
    });
  };

  it('reads a part of a blob: resumed within it, a whole 200 cut to it, a short or foreign 206 not taken as it', async () => {
    const bytes = await readFile(layer.path);
    const from = MiB + 77;
    assert.ok(4 * MiB < bytes.length, 'parts short of the end');
    const readPart = async (
      script: readonly PartStep[],
      until: number,
      ranges: (string | undefined)[] = [],
    ): Promise<{ part: Buffer; ranges: (string | undefined)[]; resumedAt: number[] }> => {
      const registry = await partOrigin(
        `part-${script.join('-')}-${String(until)}`,
        script,
        until,
        ranges,
      );
      const blobs = reader();
      const signal = AbortSignal.timeout(30_000);
      const digest = parseDigest(layer.digest);
      const resumedAt: number[] = [];
      const open = (at: number): Promise<OpenedBlob> =>
        blobs.open(registry, repository, digest, signal, undefined, at, until);
      const body = resumingBody(await open(from), {
        signal,
        reopen: open,
        onResume: (at) => resumedAt.push(at),
        random: () => 0,
        from: { byte: from, size: bytes.length },
        until,
      });
      const blocks: Buffer[] = [];
      for await (const block of body.blocks) {
        blocks.push(Buffer.from(block));
      }
      return { part: Buffer.concat(blocks), ranges, resumedAt };
    };
    const asked = (start: number, until: number): string =>
      `bytes=${String(start)}-${String(until - 1)}`;

    const until = 3 * MiB + 5;
    const cut = await readPart(['cut', 'part'], until);
    assert.ok(cut.part.equals(bytes.subarray(from, until)), 'the part, exactly');
    assert.deepEqual(cut.resumedAt, [from + MiB]);
    assert.deepEqual(cut.ranges, [asked(from, until), asked(from + MiB, until)]);

    // Every 206 shorter than asked, 256 KiB at most: the rest is asked for each time, and a
    // capped answer that brought its bytes is progress, however many the part takes (more
    // than `ORIGIN_RESUMES` here).
    const short = await readPart(['short'], until);
    assert.ok(short.part.equals(bytes.subarray(from, until)), 'the part from capped answers');
    const capped = Array.from(
      { length: Math.ceil((until - from) / CAP) },
      (_, i) => from + i * CAP,
    );
    assert.ok(capped.length > ORIGIN_RESUMES + 1, `${String(capped.length)} answers`);
    assert.deepEqual(short.resumedAt, capped.slice(1));
    assert.deepEqual(
      short.ranges,
      capped.map((start) => asked(start, until)),
    );

    const whole = await readPart(['whole'], until);
    assert.ok(whole.part.equals(bytes.subarray(from, until)), 'the part of the whole blob');
    assert.deepEqual(whole.resumedAt, []);
    assert.deepEqual(whole.ranges, [asked(from, until)]);

    // A whole 200 that breaks off right after the part's last byte, at the end of a block: the
    // part is whole, and nothing is asked again.
    const aligned = 4 * MiB;
    const toEnd = await readPart(['whole-to-end'], aligned);
    assert.ok(toEnd.part.equals(bytes.subarray(from, aligned)), 'the part up to the break');
    assert.deepEqual(toEnd.resumedAt, []);
    assert.deepEqual(toEnd.ranges, [asked(from, aligned)]);

    // A 206 from the right byte of a blob of another size is not this blob's part: not at
    // first, and not to resume either (asked again within the budget, then given up).
    await assert.rejects(
      readPart(['foreign'], until),
      /reading from byte \d+: the origin answered 206/,
    );
    await assert.rejects(
      readPart(['cut', 'foreign'], until),
      /resuming at byte \d+: the origin answered 206/,
    );

    // A resume refused (a token that expired mid-transfer) ends the read at once: asked again
    // with the same credential it would only be refused again.
    const refusedRanges: (string | undefined)[] = [];
    await assert.rejects(readPart(['cut', 'refused'], until, refusedRanges), (error) => {
      // The refusal as it came and where the read stopped, for a caller holding other
      // credentials to read the rest with.
      assert.ok(error instanceof ResumeRefusedError, String(error));
      assert.match(error.message, /resuming at byte \d+: the origin answered 401/);
      assert.equal(error.at, from + MiB);
      assert.equal(error.answer.status, 401);
      assert.equal(error.answer.headers['content-type'], 'application/json');
      assert.match(error.answer.body.toString(), /token expired/);
      return true;
    });
    assert.deepEqual(refusedRanges, [asked(from, until), asked(from + MiB, until)]);

    // A part without `from` (which gives the blob's size) is refused, its transfer stopped.
    let stoppedWith: Error | undefined;
    const stray: OpenedBlob = {
      status: 206,
      headers: {},
      size: 10,
      answer: Buffer.alloc(0),
      blocks: (async function* () {})(),
      cancel: (reason) => {
        stoppedWith = reason;
      },
    };
    assert.throws(
      () =>
        resumingBody(stray, {
          signal: AbortSignal.timeout(1_000),
          reopen: () => Promise.reject(new Error('not asked')),
          until: 10,
        }),
      /read with `from`/,
    );
    assert.match(String(stoppedWith), /read with `from`/);
  });

  it('reads the rest of a part with the next source when a resume is refused, from the same byte, past a next source that fails', async () => {
    const bytes = await readFile(layer.path);
    const from = MiB + 77;
    // Room for two cuts of 1 MiB inside the part.
    const until = 4 * MiB + 5;
    assert.ok(until < bytes.length, 'a part short of the end');
    const asked = (start: number): string => `bytes=${String(start)}-${String(until - 1)}`;
    /**
     * The part read from the first of `scripts`' origins; a resume it refuses moves the read
     * to the next (the order `nextSource` gives them in), each asked from the byte the read
     * stopped at.
     */
    const readFrom = async (
      name: string,
      scripts: readonly (readonly PartStep[])[],
    ): Promise<{
      part: Promise<Buffer>;
      ranges: (string | undefined)[][];
      whys: Error[];
      resumedAt: number[];
    }> => {
      const ranges = scripts.map((): (string | undefined)[] => []);
      const origins = await Promise.all(
        scripts.map((script, i) =>
          partOrigin(`${name}-${String(i)}`, script, until, ranges[i] ?? []),
        ),
      );
      const blobs = reader();
      const signal = AbortSignal.timeout(30_000);
      const digest = parseDigest(layer.digest);
      const openAt =
        (origin: UpstreamRegistry) =>
        (at: number): Promise<OpenedBlob> =>
          blobs.open(origin, repository, digest, signal, undefined, at, until);
      const [firstOrigin, ...others] = origins;
      assert.ok(firstOrigin !== undefined);
      const whys: Error[] = [];
      const resumedAt: number[] = [];
      const body = resumingBody(await openAt(firstOrigin)(from), {
        signal,
        reopen: openAt(firstOrigin),
        onResume: (at) => resumedAt.push(at),
        random: () => 0,
        from: { byte: from, size: bytes.length },
        until,
        nextSource: (why) => {
          whys.push(why);
          const next = others.shift();
          return next === undefined ? undefined : openAt(next);
        },
      });
      const part = (async () => {
        const blocks: Buffer[] = [];
        for await (const block of body.blocks) {
          blocks.push(Buffer.from(block));
        }
        return Buffer.concat(blocks);
      })();
      return { part, ranges, whys, resumedAt };
    };

    // Cut 1 MiB in, its resume refused; the second source answers 503 at once, the third the
    // rest: each asked once, from the byte the cut stopped at.
    const moved = await readFrom('moved', [['cut', 'refused'], ['unavailable'], ['part']]);
    assert.ok((await moved.part).equals(bytes.subarray(from, until)), 'the part, exactly');
    assert.deepEqual(moved.ranges, [
      [asked(from), asked(from + MiB)],
      [asked(from + MiB)],
      [asked(from + MiB)],
    ]);
    assert.deepEqual(moved.resumedAt, [from + MiB], 'one resume; the moves are not resumes');
    const [refusal, unavailable] = moved.whys;
    assert.equal(moved.whys.length, 2);
    assert.ok(refusal instanceof ResumeRefusedError, String(refusal));
    assert.equal(refusal.at, from + MiB);
    assert.match(String(unavailable), /resuming at byte \d+: the origin answered 503/);

    // The next source refuses too, and none is left: the body ends with its refusal.
    const none = await readFrom('none-left', [['cut', 'refused'], ['refused']]);
    await assert.rejects(none.part, (error) => {
      assert.ok(error instanceof ResumeRefusedError, String(error));
      assert.equal(error.at, from + MiB);
      assert.equal(error.answer.status, 401);
      return true;
    });
    assert.equal(none.whys.length, 2, 'asked for a third source');
    assert.deepEqual(none.ranges, [[asked(from), asked(from + MiB)], [asked(from + MiB)]]);

    // A moved-to source that answers and then breaks off is resumed as the first one was.
    const resumed = await readFrom('resumed', [
      ['cut', 'refused'],
      ['cut', 'part'],
    ]);
    assert.ok((await resumed.part).equals(bytes.subarray(from, until)), 'the part, exactly');
    assert.deepEqual(resumed.ranges, [
      [asked(from), asked(from + MiB)],
      [asked(from + MiB), asked(from + 2 * MiB)],
    ]);
    assert.deepEqual(resumed.resumedAt, [from + MiB, from + 2 * MiB]);
  });

  it('fails a 206 to a request for the whole blob rather than hand it on as an answer', async () => {
    const bytes = await readFile(layer.path);
    const partial = await serve('unasked-206', (_request, response) => {
      response.writeHead(206, {
        'content-length': 100,
        'content-range': `bytes 0-99/${String(bytes.length)}`,
      });
      response.end(bytes.subarray(0, 100));
    });
    await assert.rejects(
      openLayer(reader(), partial),
      /answered 206 to a request for the whole blob/,
    );
  });

  it('resumes from a registry that ignores Range: the whole-blob 200 goes on after the bytes received', async () => {
    const bytes = await readFile(layer.path);
    const { origin, ranges } = await scripted('ignores-range', bytes, ['cut', 'whole']);
    const read = await readResuming(origin);
    assert.equal(read.digest, layer.digest);
    assert.deepEqual(read.resumedAt, [2 * MiB + 1234]);
    assert.deepEqual(ranges, [undefined, `bytes=${String(2 * MiB + 1234)}-`]);
  });

  it('reads the rest of a blob from a CDN that caps its ranges, answer after answer', async () => {
    const bytes = await readFile(layer.path);
    const { origin, ranges } = await scripted('capped-ranges', bytes, ['cut', 'capped']);
    const read = await readResuming(origin);
    assert.equal(read.digest, layer.digest);
    const resumes = Array.from(
      { length: Math.ceil((bytes.length - (2 * MiB + 1234)) / (256 * 1024)) },
      (_, i) => 2 * MiB + 1234 + i * 256 * 1024,
    );
    assert.ok(resumes.length > ORIGIN_RESUMES, `${String(resumes.length)} capped answers`);
    assert.deepEqual(read.resumedAt, resumes);
    assert.deepEqual(ranges, [undefined, ...resumes.map((at) => `bytes=${String(at)}-`)]);
  });

  it('asks again after a resume request answered 503 or reset, within the same budget', async () => {
    const bytes = await readFile(layer.path);
    const { origin, ranges } = await scripted('flaky-resume', bytes, [
      'cut',
      'unavailable',
      'reset',
      'range',
    ]);
    const read = await readResuming(origin);
    assert.equal(read.digest, layer.digest);
    const at = 2 * MiB + 1234;
    assert.deepEqual(ranges, [undefined, ...Array<string>(3).fill(`bytes=${String(at)}-`)]);
    // The reset may be asked again by the client itself (a reused connection): two or three.
    assert.ok(read.resumedAt.length >= 2, `resumed ${String(read.resumedAt.length)} times`);
    assert.ok(read.resumedAt.every((byte) => byte === at));

    const { origin: down, ranges: asked } = await scripted('down-after-cut', bytes, [
      'cut',
      'unavailable',
    ]);
    await assert.rejects(readResuming(down), /answered 503/);
    // The first break brought progress; then five requests in a row without any.
    assert.equal(asked.length, 1 + ORIGIN_RESUMES);
  });

  it('gives up on a registry that never answers, after the headers timeout', async () => {
    const silent = await serve('silent', () => undefined);
    const started = performance.now();
    await assert.rejects(
      openLayer(reader({ timeouts: { ...timeouts, headersMs: 300 } }), silent),
      /no response from .* in 300 ms/,
    );
    assert.ok(performance.now() - started < 5000);
  });

  it('waits out a head slower than the idle timeout, and gives a body that stops part-way up at it', async () => {
    const bytes = Buffer.alloc(4096, 7);
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    let stall = false;
    const origin = await serve('late-head', (_req, res) => {
      // The head 400 ms late: more than the idle timeout, within the headers timeout.
      setTimeout(() => {
        res.writeHead(200, { 'content-length': bytes.length });
        if (stall) {
          res.write(bytes.subarray(0, 1000));
        } else {
          res.end(bytes);
        }
      }, 400);
    });
    const blobs = reader({ timeouts: { ...timeouts, headersMs: 3000, idleMs: 150 } });
    const read = (): Promise<OpenedBlob> =>
      blobs.open(origin, repository, parseDigest(digest), AbortSignal.timeout(10_000));
    assert.equal((await drain(await read())).digest, digest);
    stall = true;
    const opened = await read();
    await assert.rejects(drain(opened), /went quiet for 150 ms/);
  });

  it('tells a registry nothing answers at from one that does not answer', async () => {
    const closed = createServer();
    const url = await listen(closed);
    await new Promise((resolve) => closed.close(resolve));
    const refused = await openLayer(reader(), { host: 'gone', url: new URL(url) }).then(
      () => assert.fail('opened a blob at a closed port'),
      (error: unknown) => error,
    );
    assert.equal(isUnreachable(refused), true, String(refused));
    const silent = await serve('silent-too', () => undefined);
    const late = await openLayer(
      reader({ timeouts: { ...timeouts, headersMs: 200 } }),
      silent,
    ).then(
      () => assert.fail('a silent registry answered'),
      (error: unknown) => error,
    );
    assert.equal(isUnreachable(late), false, String(late));
  });
});
