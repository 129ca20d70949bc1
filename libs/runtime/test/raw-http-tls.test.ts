/**
 * The piece client over TLS, against real HTTPS servers with certificates from a CA of the
 * test's own: it trusts only the configured CA, checks the server's name (the URL's address,
 * or the configured server name), keeps connections alive, shows its client certificate, and
 * gives up on a handshake that never ends within the timeout or when aborted.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import {
  createServer as createTcpServer,
  type AddressInfo,
  type Server as TcpServer,
} from 'node:net';
import { createServer, type Server } from 'node:https';
import { after, afterEach, before, describe, it } from 'node:test';
import { createSecureContext, TLSSocket } from 'node:tls';

import { makeTestCa, type IssuedCert, type TestCa } from '@shoal/testkit';

import { RawHttpClient, type GetOptions } from '../src/raw-http.js';

const BODY = randomBytes(2 * 1024 * 1024 + 5);

function options(timeoutMs = 5000, signal = AbortSignal.timeout(10_000)): GetOptions {
  return { headers: {}, signal, timeoutMs, timeoutError: (kind) => new Error(`timeout: ${kind}`) };
}

async function get(client: RawHttpClient, url: string, opts = options()): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let status = 0;
  await client.get(new URL(url), opts, {
    onHead: (s) => {
      status = s;
    },
    onBody: (bytes) => {
      chunks.push(Buffer.from(bytes));
    },
  });
  assert.equal(status, 200);
  return Buffer.concat(chunks);
}

describe('RawHttpClient over TLS', () => {
  let ca: TestCa;
  let otherCa: TestCa;
  let serverCert: IssuedCert;
  let clientCert: IssuedCert;
  let server: Server;
  let base: string;
  let handshakes: number;
  /** Common names of the client certificates servers saw, verified or not. */
  let clientNames: string[] = [];
  const clients: RawHttpClient[] = [];

  /** A client trusting `trust` (the CA file), optionally with a client certificate and name. */
  async function client(
    trust: TestCa,
    extra: { cert?: IssuedCert; servername?: string } = {},
  ): Promise<RawHttpClient> {
    const context = createSecureContext({
      ca: await readFile(trust.caFile),
      ...(extra.cert === undefined
        ? {}
        : { cert: await readFile(extra.cert.certFile), key: await readFile(extra.cert.keyFile) }),
    });
    const made = new RawHttpClient({
      secureContext: () => context,
      servername: extra.servername,
    });
    clients.push(made);
    return made;
  }

  before(async () => {
    ca = await makeTestCa();
    otherCa = await makeTestCa('other-ca');
    serverCert = await ca.issue('peer', ['shoal-pieces']);
    clientCert = await ca.issue('member');
    server = createServer(
      {
        cert: await readFile(serverCert.certFile),
        key: await readFile(serverCert.keyFile),
        ca: await readFile(ca.caFile),
        requestCert: true,
        rejectUnauthorized: false,
      },
      (req, res) => {
        const socket = req.socket;
        assert.ok(socket instanceof TLSSocket);
        const subject = socket.getPeerCertificate().subject as { CN?: string } | undefined;
        clientNames.push(`${subject?.CN ?? '-'}:${String(socket.authorized)}`);
        res.setHeader('content-length', BODY.length);
        res.end(BODY);
      },
    );
    server.on('secureConnection', () => {
      handshakes += 1;
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterEach(() => {
    for (const made of clients.splice(0)) {
      made.close();
    }
    server.closeAllConnections();
  });

  after(async () => {
    await new Promise((resolve) => server.close(resolve));
    await ca.remove();
    await otherCa.remove();
  });

  it('reads pieces from a server of the trusted CA over one keep-alive connection', async () => {
    handshakes = 0;
    const trusting = await client(ca);
    for (let i = 0; i < 3; i++) {
      assert.ok((await get(trusting, `${base}/pieces/${i}`)).equals(BODY));
    }
    assert.equal(handshakes, 1, 'one TLS connection, kept alive');
  });

  it('refuses a server whose certificate is not from the trusted CA', async () => {
    await assert.rejects(
      get(await client(otherCa), `${base}/pieces/0`),
      /certificate|verify|self[- ]signed/i,
    );
    // No system CA trusts the test's CA either.
    await assert.rejects(get(new RawHttpClient(), `${base}/pieces/0`), /certificate|verify/i);
  });

  it('checks the server name: the address dialled, or the configured name', async () => {
    const named = await client(ca, { servername: 'shoal-pieces' });
    assert.ok((await get(named, `${base}/pieces/0`)).equals(BODY));
    const wrongName = await client(ca, { servername: 'someone-else' });
    await assert.rejects(get(wrongName, `${base}/pieces/0`), /altnames|does not match/i);
    // By name, the name dialled is checked (the certificate names localhost too).
    const port = (server.address() as AddressInfo).port;
    assert.ok((await get(await client(ca), `https://localhost:${port}/p`)).equals(BODY));
  });

  it('shows its client certificate to a server that asks for one', async () => {
    clientNames = [];
    assert.ok((await get(await client(ca, { cert: clientCert }), `${base}/p`)).equals(BODY));
    const stranger = await otherCa.issue('stranger');
    assert.ok((await get(await client(ca, { cert: stranger }), `${base}/p`)).equals(BODY));
    assert.deepEqual(clientNames, ['member:true', 'stranger:false']);
  });

  it('times out a handshake that never ends, and stops on an abort', async () => {
    // A TCP server that reads the ClientHello and never answers it (reading, so that it
    // notices when the client goes away).
    const silent: TcpServer = createTcpServer((socket) => socket.resume());
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const url = `https://127.0.0.1:${(silent.address() as AddressInfo).port}/pieces/0`;
    try {
      const trusting = await client(ca);
      await assert.rejects(get(trusting, url, options(200)), /timeout/);
      const controller = new AbortController();
      const pending = get(trusting, url, options(5000, controller.signal));
      setTimeout(() => controller.abort(new Error('caller gave up')), 50);
      await assert.rejects(pending, /caller gave up/);
    } finally {
      await new Promise((resolve) => silent.close(resolve));
    }
  });
});
