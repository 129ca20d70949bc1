/**
 * The agent's requests to a registry under its rate limits: a 429 with Retry-After holds only
 * requests of its kind, and never the `/v2/` check, a resume of a transfer already started or
 * a late range read of a blob being served. The registry is a scripted front: its 429s are the
 * fault under test.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';

import { digestOf } from '@shoal/proto';
import { readAnswer, UpstreamClient, type UpstreamRegistry } from '@shoal/registry';
import { createMetrics } from '@shoal/runtime';

import { createAgentMetrics } from '../src/metrics.js';
import { RegistryRequests } from '../src/upstream/registry-requests.js';

const BLOB = Buffer.from('the bytes of a layer being pulled');
const DIGEST = digestOf(BLOB);
const TIMEOUTS = { connectMs: 2000, headersMs: 2000, idleMs: 2000 };
const TOKEN = 'Bearer account';

describe("rate-limit holds of the agent's registry requests", () => {
  let server: Server;
  let registry: UpstreamRegistry;
  let client: UpstreamClient;
  let requests: RegistryRequests;
  /** `METHOD path [range]` of every request the registry received. */
  const seen: string[] = [];
  /** Whole-blob GETs still to be answered 429 (the registry's blob limit, met once). */
  let blob429s = 1;

  before(async () => {
    server = createServer((req, res) => {
      const range = req.headers.range;
      seen.push(`${req.method ?? ''} ${req.url ?? ''}${range === undefined ? '' : ` ${range}`}`);
      const limited = { 'retry-after': '60', 'content-type': 'application/json' };
      if (req.url?.includes('/manifests/') === true) {
        res.writeHead(429, limited).end('{"errors":[{"code":"TOOMANYREQUESTS"}]}');
        return;
      }
      if (req.url?.includes('/blobs/') === true) {
        if (range === undefined && blob429s > 0) {
          blob429s -= 1;
          res.writeHead(429, limited).end('{"errors":[{"code":"TOOMANYREQUESTS"}]}');
          return;
        }
        const from = Number(/^bytes=(\d+)-/.exec(range ?? '')?.[1] ?? 0);
        const part = BLOB.subarray(from);
        res.writeHead(range === undefined ? 200 : 206, { 'content-length': part.length });
        res.end(part);
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    registry = { host: `127.0.0.1:${port}`, url: new URL(`http://127.0.0.1:${port}`) };
    client = new UpstreamClient(TIMEOUTS);
    requests = new RegistryRequests(client, createAgentMetrics(createMetrics('agent')), TIMEOUTS);
  });

  after(async () => {
    requests.close();
    await client.close();
    await new Promise((resolve) => server.close(resolve));
  });

  const openBlob = async (from?: number): Promise<{ status: number; body: string }> => {
    const opened = await requests.openBlob({
      registry,
      name: 'team/app',
      digest: DIGEST,
      authorization: TOKEN,
      signal: AbortSignal.timeout(5000),
      ...(from === undefined ? {} : { from }),
    });
    const blocks: Buffer[] = [];
    for await (const block of opened.blocks) {
      blocks.push(Buffer.from(block));
    }
    return { status: opened.status, body: Buffer.concat(blocks).toString() };
  };
  const send = async (
    kind: 'manifest' | 'blob' | 'ping',
    path: string,
    extra: { range?: string; started?: boolean } = {},
  ): Promise<number> => {
    const response = await requests.send({
      registry,
      method: 'GET',
      kind,
      path,
      headers: { authorization: TOKEN, range: extra.range },
      signal: AbortSignal.timeout(5000),
      ...(extra.started === undefined ? {} : { started: extra.started }),
    });
    await readAnswer(response);
    return response.status;
  };
  const blobPath = `/v2/team/app/blobs/${DIGEST.toString()}`;

  it("holds a manifest's 429 for manifests only; blobs, the ping, resumes and late reads go on", async () => {
    assert.equal(await send('manifest', '/v2/team/app/manifests/latest'), 429);
    assert.equal(await send('manifest', '/v2/team/app/manifests/latest'), 429);
    assert.equal(seen.length, 1, 'the second manifest GET was held');

    // Another kind: asked. The registry's blob limit answers this one 429 and starts a hold.
    assert.equal((await openBlob()).status, 429);
    assert.equal(seen.length, 2);
    assert.equal((await openBlob()).status, 429);
    assert.equal(seen.length, 2, 'a new blob GET is held now');

    // A transfer already started is never held: its resume and a late range read are asked.
    assert.deepEqual(await openBlob(4), { status: 206, body: BLOB.subarray(4).toString() });
    assert.equal(await send('blob', blobPath, { range: 'bytes=10-', started: true }), 206);
    // The /v2/ check is never held: its challenge is what makes clients send credentials.
    assert.equal(await send('ping', '/v2/'), 200);
    assert.deepEqual(seen, [
      'GET /v2/team/app/manifests/latest',
      `GET ${blobPath}`,
      `GET ${blobPath} bytes=4-`,
      `GET ${blobPath} bytes=10-`,
      'GET /v2/',
    ]);
  });
});
