/**
 * HTTPS listeners from certificate files: the watcher serves its API and webhooks over TLS
 * with a certificate from the test's CA, refuses plain HTTP and clients that do not trust the
 * CA; and a renewed certificate (new files in place) is served without a restart.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { copyFile, readFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { Agent, request, type RequestOptions } from 'node:https';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect as tlsConnect } from 'node:tls';

import { clientVerified, createLogger, httpsFactory } from '@shoal/runtime';
import {
  freePort,
  makeTempDir,
  makeTestCa,
  serviceMain,
  startNats,
  startProcess,
  startRegistry,
  waitFor,
  WATCHER_TOKEN,
  type NatsServer,
  type Registry,
  type RunningProcess,
  type TestCa,
} from '@shoal/testkit';

interface Answer {
  status: number;
  body: string;
}

function httpsCall(url: string, options: RequestOptions & { body?: string } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { ...options, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end(options.body);
  });
}

/** The serial number of the certificate a TLS server presents. */
function servedSerial(port: number, ca: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
      const serial = socket.getPeerX509Certificate()?.serialNumber ?? '';
      socket.destroy();
      resolve(serial);
    });
    socket.on('error', reject);
  });
}

describe('HTTPS listeners', () => {
  let ca: TestCa;
  let caPem: Buffer;
  let nats: NatsServer;
  let registry: Registry;
  let watcher: RunningProcess;
  let dir: { path: string; remove(): Promise<void> };
  let base: string;

  before(async () => {
    ca = await makeTestCa();
    caPem = await readFile(ca.caFile);
    nats = await startNats();
    registry = await startRegistry();
    dir = await makeTempDir('https');
    const cert = await ca.issue('watcher');
    const port = await freePort();
    base = `https://127.0.0.1:${String(port)}`;
    watcher = startProcess(process.execPath, [serviceMain('watcher')], {
      logPath: join(dir.path, 'watcher.log'),
      env: {
        PATH: process.env.PATH ?? '',
        SHOAL_NATS_URL: nats.url,
        SHOAL_WATCHER_LISTEN: `127.0.0.1:${String(port)}`,
        SHOAL_WATCHER_REGISTRIES: `${registry.host}=${registry.url}`,
        SHOAL_WATCHER_WEBHOOK_TOKEN: WATCHER_TOKEN,
        SHOAL_WATCHER_TLS_CERT_FILE: cert.certFile,
        SHOAL_WATCHER_TLS_KEY_FILE: cert.keyFile,
      },
    });
    await waitFor(
      'the watcher over HTTPS',
      async () =>
        (await httpsCall(`${base}/readyz`, { ca: caPem }).catch(() => undefined))?.status === 200,
      { process: watcher, timeoutMs: 30_000 },
    );
  });

  after(async () => {
    await watcher.stop();
    await registry.stop();
    await nats.stop();
    await dir.remove();
    await ca.remove();
  });

  it('serves the preheat API over TLS to a client that trusts the CA', async () => {
    const list = await httpsCall(`${base}/preheat`, {
      ca: caPem,
      headers: { authorization: `Bearer ${WATCHER_TOKEN}` },
    });
    assert.equal(list.status, 200);
    assert.ok(Array.isArray((JSON.parse(list.body) as { jobs?: unknown[] }).jobs));
    const refused = await httpsCall(`${base}/preheat`, { ca: caPem });
    assert.equal(refused.status, 401, 'the token is still required over TLS');
  });

  it('refuses plain HTTP and clients that do not trust the CA', async () => {
    await assert.rejects(
      httpsCall(`${base}/readyz`),
      /self[- ]signed|unable to verify|certificate/i,
    );
    const plain = await new Promise<number | Error>((resolve) => {
      const req = httpRequest(
        `${base.replace('https:', 'http:')}/readyz`,
        { timeout: 5_000 },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('error', (error) => resolve(error));
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.end();
    });
    assert.ok(plain instanceof Error || plain >= 400, `plain HTTP got ${String(plain)}`);
  });

  it('serves a renewed certificate without a restart', async () => {
    const first = await ca.issue('renewing-1');
    const certFile = join(dir.path, 'tls.crt');
    const keyFile = join(dir.path, 'tls.key');
    await copyFile(first.certFile, certFile);
    await copyFile(first.keyFile, keyFile);
    const factory = await httpsFactory(
      { certFile, keyFile },
      { cert: 'CERT', key: 'KEY' },
      createLogger({ service: 'https-test', level: 'silent' }),
      100,
    );
    assert.ok(factory !== undefined);
    const server = factory.serverFactory((_req, res) => res.end('ok'));
    const port = await freePort();
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    try {
      const before = await servedSerial(port, caPem);
      assert.equal(before, new X509Certificate(await readFile(first.certFile)).serialNumber);
      const second = await ca.issue('renewing-2');
      await copyFile(second.keyFile, keyFile);
      await copyFile(second.certFile, certFile);
      const renewed = new X509Certificate(await readFile(second.certFile)).serialNumber;
      await waitFor(
        'the renewed certificate',
        async () => (await servedSerial(port, caPem)) === renewed,
        {
          timeoutMs: 5_000,
          intervalMs: 100,
        },
      );
    } finally {
      factory.stop();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('with a client CA, tells verified clients apart, also on a resumed session', async () => {
    const serverCert = await ca.issue('mtls-server');
    const member = await ca.issue('mtls-member');
    const otherCa = await makeTestCa('mtls-other');
    const factory = await httpsFactory(
      { certFile: serverCert.certFile, keyFile: serverCert.keyFile, clientCaFile: ca.caFile },
      { cert: 'CERT', key: 'KEY', clientCa: 'CLIENT_CA' },
      createLogger({ service: 'https-test', level: 'silent' }),
    );
    assert.ok(factory?.verifiesClients === true);
    const server = factory.serverFactory((req, res) => res.end(String(clientVerified(req.socket))));
    const port = await freePort();
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    const url = `https://127.0.0.1:${String(port)}/`;
    try {
      const stranger = await otherCa.issue('mtls-stranger');
      const certOf = async (c: { certFile: string; keyFile: string }) => ({
        cert: await readFile(c.certFile),
        key: await readFile(c.keyFile),
      });
      // One agent without keep-alive: every request is a new connection that offers the
      // session (ticket) of the one before, as a client resuming would.
      const agent = new Agent({ keepAlive: false, maxCachedSessions: 10 });
      const none = [];
      for (let i = 0; i < 3; i++) {
        none.push((await httpsCall(url, { ca: caPem, agent })).body);
      }
      assert.deepEqual(none, ['false', 'false', 'false'], 'no certificate, however many times');
      const memberAnswer = await httpsCall(url, { ca: caPem, ...(await certOf(member)) });
      assert.equal(memberAnswer.body, 'true');
      const strangerAnswer = await httpsCall(url, { ca: caPem, ...(await certOf(stranger)) });
      assert.equal(strangerAnswer.body, 'false', 'a certificate of another CA');
      agent.destroy();
    } finally {
      factory.stop();
      await new Promise((resolve) => server.close(resolve));
      await otherCa.remove();
    }
  });
});
