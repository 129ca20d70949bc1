/**
 * The test kit's own servers: each starts on a random port, does what later tests rely on,
 * and leaves nothing behind when stopped.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import {
  generateImage,
  listeningPorts,
  makeTempDir,
  pushImage,
  startFaultProxy,
  startNats,
  startRegistry,
} from '../src/index.js';

/** Reads the INFO line a NATS server sends on connect. */
async function natsInfo(port: number): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      text += chunk;
      const end = text.indexOf('\r\n');
      if (end !== -1) {
        socket.destroy();
        resolve(JSON.parse(text.slice('INFO '.length, end)) as Record<string, unknown>);
      }
    });
    socket.on('error', reject);
  });
}

describe('startNats', () => {
  it('runs nats-server with JetStream on a random port and removes its store on stop', async () => {
    const nats = await startNats();
    try {
      assert.match(nats.url, /^nats:\/\/127\.0\.0\.1:\d+$/);
      const info = await natsInfo(nats.port);
      assert.equal(info.jetstream, true);
      assert.equal(info.port, nats.port);
    } finally {
      await nats.stop();
    }
    assert.equal(existsSync(nats.storeDir), false);
    await assert.rejects(natsInfo(nats.port));
  });
});

describe('listeningPorts', () => {
  it('lists the ports a process listens on, and no longer one it closed', async () => {
    const nats = await startNats();
    try {
      const pid = nats.process.child.pid;
      assert.ok(pid !== undefined);
      const open = await listeningPorts(pid);
      assert.ok(open.has(nats.port), `client port ${String(nats.port)} in ${[...open].join(', ')}`);
      // This process's own listener is not nats-server's.
      const server = createServer();
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const own = (server.address() as { port: number }).port;
      assert.ok(!(await listeningPorts(pid)).has(own));
      assert.ok((await listeningPorts(process.pid)).has(own));
      await new Promise((resolve) => server.close(resolve));
      assert.ok(!(await listeningPorts(process.pid)).has(own));
    } finally {
      await nats.stop();
    }
  });
});

describe('generateImage', () => {
  it('writes an OCI layout whose blobs match their descriptors', async () => {
    const dir = await makeTempDir('image-test');
    try {
      const image = await generateImage(dir.path, { layerSizes: [1000, 70_000], seed: 'kit' });
      assert.equal(image.layers.length, 2);
      for (const blob of [image.manifest, ...image.blobs]) {
        const bytes = await readFile(join(dir.path, 'blobs', 'sha256', blob.digest.slice(7)));
        assert.equal(bytes.length, blob.size);
        assert.equal(`sha256:${createHash('sha256').update(bytes).digest('hex')}`, blob.digest);
      }
      const again = await generateImage(join(dir.path, 'again'), {
        layerSizes: [1000, 70_000],
        seed: 'kit',
      });
      assert.deepEqual(again.layers, image.layers, 'the same seed gives the same layers');
      const other = await generateImage(join(dir.path, 'other'), {
        layerSizes: [1000],
        seed: 'other',
      });
      assert.notEqual(other.layers[0]?.digest, image.layers[0]?.digest);
    } finally {
      await dir.remove();
    }
  });
});

describe('startRegistry', () => {
  it('sends push notifications to a URL and logs every request it serves', async () => {
    const envelopes: { auth: string | undefined; body: unknown }[] = [];
    const receiver = createServer((req: IncomingMessage, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        envelopes.push({
          auth: req.headers.authorization,
          body: JSON.parse(Buffer.concat(chunks).toString()),
        });
        res.end();
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    const address = receiver.address();
    assert.ok(address !== null && typeof address === 'object');
    const registry = await startRegistry({
      notify: {
        url: `http://127.0.0.1:${address.port}/hook`,
        headers: { Authorization: 'Bearer kit' },
      },
    });
    const dir = await makeTempDir('image-test');
    try {
      const image = await generateImage(dir.path, { layerSizes: [2000], seed: 'notify' });
      await pushImage(image, registry.host, 'kit/notify');
      const deadline = Date.now() + 15_000;
      const pushedManifest = (): boolean =>
        envelopes.some(
          (e) =>
            JSON.stringify(e.body).includes(`"digest":"${image.manifest.digest}"`) &&
            JSON.stringify(e.body).includes('"action":"push"'),
        );
      while (!pushedManifest() && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.ok(pushedManifest(), 'a push event for the manifest arrived');
      assert.ok(envelopes.every((e) => e.auth === 'Bearer kit'));
      const response = await fetch(
        `${registry.url}/v2/kit/notify/blobs/${image.layers[0]?.digest ?? ''}`,
      );
      await response.arrayBuffer();
      assert.equal(response.status, 200);
      const gets = await registry.blobGets(image.layers[0]?.digest);
      assert.equal(gets.length, 1);
      assert.equal(gets[0]?.userAgent, 'node');
    } finally {
      await registry.stop();
      await dir.remove();
      receiver.close();
    }
  });
});

describe('startFaultProxy', () => {
  it('passes a real registry through, refuses while a status fault is set, and slows bytes', async () => {
    const registry = await startRegistry();
    const proxy = await startFaultProxy({ upstream: registry.url });
    const dir = await makeTempDir('fault-proxy-test');
    try {
      const layerBytes = 512 * 1024;
      const image = await generateImage(dir.path, { layerSizes: [layerBytes], seed: 'proxy' });
      await pushImage(image, registry.host, 'kit/proxy');
      const digest = image.layers[0]?.digest ?? '';
      const get = async (): Promise<{ status: number; digest: string; headers: Headers }> => {
        const response = await fetch(`${proxy.url}/v2/kit/proxy/blobs/${digest}`, {
          signal: AbortSignal.timeout(15_000),
        });
        const body = Buffer.from(await response.arrayBuffer());
        return {
          status: response.status,
          digest: `sha256:${createHash('sha256').update(body).digest('hex')}`,
          headers: response.headers,
        };
      };
      const healthy = await get();
      assert.equal(healthy.status, 200);
      assert.equal(healthy.digest, digest);

      proxy.set({ kind: 'status', statuses: [429], retryAfterS: 2 });
      const limited = await get();
      assert.equal(limited.status, 429);
      assert.equal(limited.headers.get('retry-after'), '2');
      proxy.set({ kind: 'status', statuses: [500, 503] });
      assert.deepEqual([(await get()).status, (await get()).status], [500, 503]);
      proxy.set({ kind: 'down' });
      await assert.rejects(get());
      proxy.set(undefined);
      assert.equal((await get()).digest, digest);

      // 512 KiB at 1 MiB/s takes about half a second, after the 200 ms delay.
      proxy.set({ kind: 'slow', delayMs: 200, rateBytes: 1024 * 1024 });
      const started = performance.now();
      const slow = await get();
      const elapsedMs = performance.now() - started;
      proxy.set(undefined);
      assert.equal(slow.digest, digest);
      assert.ok(elapsedMs >= 600, `a slowed 512 KiB answer took ${elapsedMs.toFixed(0)} ms`);

      const counts = proxy.counts();
      assert.equal(counts.refused, 4);
      assert.equal(counts.forwarded, 3);
      assert.equal(counts.slowed, 1);
      assert.equal(counts.bytes, 3 * (image.layers[0]?.size ?? 0));
      // Only what the proxy forwarded reached the registry.
      assert.equal((await registry.blobGets(digest)).length, 3);
      // It received all seven (refused ones too), with whatever credentials they carried.
      const received = proxy.received();
      assert.equal(received.length, 7);
      assert.ok(received.every((r) => r.method === 'GET' && r.url.endsWith(digest)));
      proxy.set({ kind: 'status', statuses: [401] });
      await fetch(`${proxy.url}/v2/`, { headers: { authorization: 'Basic a2l0OnByb3h5' } });
      proxy.set(undefined);
      assert.deepEqual(proxy.received().at(-1), {
        method: 'GET',
        url: '/v2/',
        authorization: 'Basic a2l0OnByb3h5',
        range: undefined,
      });
    } finally {
      await proxy.stop();
      await registry.stop();
      await dir.remove();
    }
  });
});
