/**
 * Every Shoal listener is bounded against clients that hold on: a connection that sends
 * nothing is closed after the idle timeout, a client that stops reading a blob frees it, a
 * client that trickles its headers is cut after the headers timeout, and past the connection
 * cap new connections are refused, while the services keep serving everyone else.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';

import {
  freePort,
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  startWatcher,
  type AgentProcess,
  type GeneratedImage,
  type NatsServer,
  type Registry,
  type ServiceProcess,
  waitFor,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { streamDigest } from '../src/http.js';

const LIMITS = {
  SHOAL_HTTP_HEADERS_TIMEOUT_MS: '1000',
  SHOAL_HTTP_IDLE_TIMEOUT_MS: '2000',
  SHOAL_HTTP_MAX_CONNECTIONS: '8',
};

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port }, () => resolve(socket));
    socket.on('error', reject);
  });
}

/** Milliseconds until the server closes `socket`, or undefined if it is still open after `limitMs`. */
function closedWithin(socket: Socket, limitMs: number): Promise<number | undefined> {
  const started = Date.now();
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(undefined), limitMs);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(Date.now() - started);
    });
    socket.on('error', () => undefined);
    // Read what the server says before it closes (a 408), or the close is never seen.
    socket.resume();
  });
}

describe('HTTP limits', () => {
  let registry: Registry;
  let nats: NatsServer;
  let image: GeneratedImage;
  let agent: AgentProcess;
  let peerPort: number;
  const services: ServiceProcess[] = [];
  let dir: { path: string; remove(): Promise<void> };

  before(async () => {
    registry = await startRegistry();
    dir = await makeTempDir('http-limits');
    image = await generateImage(dir.path, { layerSizes: [48 * MiB], seed: 'limits' });
    await pushImage(image, registry.host, 'shoal/limits');
    nats = await startNats();
    const registries = `${registry.host}=${registry.url}`;
    services.push(await startTracker({ natsUrl: nats.url, env: LIMITS }));
    services.push(await startSeedServer({ natsUrl: nats.url, registries, env: LIMITS }));
    services.push(await startWatcher({ natsUrl: nats.url, registries, env: LIMITS }));
    peerPort = await freePort();
    agent = await startAgent({
      registries,
      defaultRegistry: registry.host,
      natsUrl: nats.url,
      env: {
        ...LIMITS,
        SHOAL_AGENT_PEER_LISTEN: `127.0.0.1:${String(peerPort)}`,
        SHOAL_AGENT_PEER_URL: `http://127.0.0.1:${String(peerPort)}`,
      },
    });
    services.push(agent);
  });

  after(async () => {
    for (const service of services.reverse()) {
      await service.stop();
    }
    await nats.stop();
    await registry.stop();
    await dir.remove();
  });

  it('closes connections that send nothing, on every listener', async () => {
    const ports = [...services.map((s) => s.port), peerPort];
    const sockets = await Promise.all(ports.map((port) => open(port)));
    const closed = await Promise.all(sockets.map((socket) => closedWithin(socket, 8_000)));
    closed.forEach((ms, i) => {
      assert.ok(ms !== undefined, `port ${String(ports[i])} kept an idle connection open`);
      // No headers within the headers timeout (1 s here), looked at every quarter of it.
      assert.ok(ms >= 900, `port ${String(ports[i])} closed it after ${String(ms)} ms`);
    });
  });

  it('frees a blob response whose client stopped reading', async () => {
    const [layer] = image.layers;
    assert.ok(layer !== undefined);
    const url = `${agent.url}/v2/shoal/limits/blobs/${layer.digest}`;
    // Cached first, so the response is ready to stream at full speed; larger than what the
    // kernel's socket buffers take, so the response cannot finish without the client.
    assert.equal((await streamDigest(url)).digest, layer.digest);
    const aborted = (): Promise<number> =>
      agent.metric('shoal_agent_mirror_requests_total', {
        kind: 'blob',
        method: 'GET',
        status: 'aborted',
      });
    const before = await aborted();
    const socket = await open(agent.port);
    socket.write(`GET /v2/shoal/limits/blobs/${layer.digest} HTTP/1.1\r\nHost: x\r\n\r\n`);
    socket.pause();
    // The agent's side of it is what matters: the response ends there, cut (a paused client
    // does not notice until it reads on).
    const started = Date.now();
    await waitFor('the agent to cut the stalled response', async () => (await aborted()) > before, {
      timeoutMs: 10_000,
      intervalMs: 250,
    });
    assert.ok(Date.now() - started >= 1_000, 'not before the idle timeout');
    socket.destroy();
    // Everyone else is served meanwhile and after.
    assert.equal((await streamDigest(url)).digest, layer.digest);
  });

  it('refuses connections past the cap, and serves again once they go', async () => {
    const tracker = services[0];
    assert.ok(tracker !== undefined);
    const held = await Promise.all(Array.from({ length: 8 }, () => open(tracker.port)));
    // Each sends a request and keeps its connection, so the cap is reached by live clients.
    for (const socket of held) {
      socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    }
    const extra = await open(tracker.port);
    const ms = await closedWithin(extra, 1_500);
    assert.ok(ms !== undefined, 'a ninth connection was accepted');
    for (const socket of held) {
      socket.destroy();
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal((await fetch(`${tracker.url}/healthz`)).status, 200);
  });

  it('cuts a client that trickles its headers soon after the headers timeout', async () => {
    const socket = await open(agent.port);
    socket.write('GET /v2/ HTTP/1.1\r\n');
    const trickle = setInterval(() => socket.write('X-Slow: 1\r\n'), 500);
    try {
      const ms = await closedWithin(socket, 40_000);
      assert.ok(ms !== undefined, 'a trickling client kept its connection');
      // The headers timeout (1 s here) and the check every quarter of it; at Node's own
      // check interval (30 s) this took up to 30 s.
      assert.ok(ms < 5_000, `cut after ${ms} ms`);
    } finally {
      clearInterval(trickle);
      socket.destroy();
    }
    assert.equal((await fetch(`${agent.url}/v2/`)).status, 200);
  });
});
