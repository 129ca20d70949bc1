/**
 * The pull side of the OCI distribution API, answered from the cache or the upstream.
 *
 * Tags are resolved at the upstream on every request, with the client's own credentials;
 * its `401` + `WWW-Authenticate` challenge is passed back so the client authenticates as it
 * would against the registry. Content addressed by digest is served from the cache once it
 * has been verified; otherwise it is fetched (one upstream fetch per blob, however many
 * clients ask), verified, cached and streamed.
 */
import type { Readable } from 'node:stream';

import { digestOf, parseDigest, type Digest, type DigestAlgorithm } from '@shoal/proto';
import { isAbortError, type Logger } from '@shoal/runtime';
import type { FastifyReply } from 'fastify';

import type { FsContentStore } from '../cache/content-store.js';
import type { DownloadTable } from '../cache/download-table.js';
import type { AgentMetrics } from '../metrics.js';
import type { UpstreamRegistry } from '../upstream/config.js';
import { headerValue, type UpstreamClient, type UpstreamResponse } from '../upstream/client.js';
import { MirrorError } from './errors.js';
import type { PullTarget } from './path.js';
import { parseRange, type ByteRange } from './range.js';

/** What a mirror request carries besides its path. */
export interface PullRequest {
  readonly method: 'GET' | 'HEAD';
  readonly registry: UpstreamRegistry;
  readonly accept: string | undefined;
  readonly authorization: string | undefined;
  readonly range: string | undefined;
  /** Aborts when the client goes away. */
  readonly signal: AbortSignal;
}

export interface MirrorDeps {
  readonly store: FsContentStore;
  readonly downloads: DownloadTable;
  readonly upstream: UpstreamClient;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  /** Largest manifest accepted from an upstream, in bytes. */
  readonly maxManifestBytes: number;
}

/** Upstream headers a client needs to see on an answer that is passed through. */
const PASSED_HEADERS = [
  'content-type',
  'content-length',
  'docker-content-digest',
  'www-authenticate',
  'retry-after',
  'docker-ratelimit-source',
  'ratelimit-limit',
  'ratelimit-remaining',
];

/** Largest error body passed through from an upstream, in bytes. */
const MAX_PASSED_BODY_BYTES = 64 * 1024;

export class Mirror {
  readonly #deps: MirrorDeps;

  constructor(deps: MirrorDeps) {
    this.#deps = deps;
  }

  /**
   * Answers one pull request on `reply`. Resolves once the answer has been handed to fastify
   * (a streamed body may still be flowing); the route returns `reply` after it.
   */
  async pull(target: PullTarget, req: PullRequest, reply: FastifyReply): Promise<void> {
    return target.kind === 'manifest'
      ? this.#manifest(target, req, reply)
      : this.#blob(target.name, target.digest, req, reply);
  }

  async #manifest(
    target: Extract<PullTarget, { kind: 'manifest' }>,
    req: PullRequest,
    reply: FastifyReply,
  ): Promise<void> {
    const { store, metrics } = this.#deps;
    const { reference } = target;
    if (reference.kind === 'digest') {
      const cached = await store.getSmall(reference.digest);
      metrics.cacheHits.inc({ kind: 'manifest', result: cached === undefined ? 'miss' : 'hit' });
      if (cached !== undefined) {
        sendManifest(reply, req.method, cached.bytes, cached.mediaType, reference.digest);
        return;
      }
    }
    const refText = reference.kind === 'tag' ? reference.tag : reference.digest.toString();
    const response = await this.#request(
      req,
      'manifest',
      `/v2/${target.name}/manifests/${refText}`,
      {
        accept: req.accept,
        authorization: req.authorization,
      },
    );
    if (response.status !== 200 || req.method === 'HEAD') {
      await passThrough(reply, response);
      return;
    }
    const expected =
      reference.kind === 'digest' ? reference.digest : announcedDigest(response.headers);
    const bytes = await readLimited(response.body, this.#deps.maxManifestBytes, () => {
      return new MirrorError(
        'MANIFEST_INVALID',
        502,
        `the upstream manifest is larger than ${this.#deps.maxManifestBytes} bytes`,
      );
    });
    const algorithm: DigestAlgorithm = expected?.algorithm ?? 'sha256';
    const actual = digestOf(bytes, algorithm);
    if (expected !== undefined && actual.toString() !== expected.toString()) {
      metrics.verificationFailures.inc({ kind: 'manifest' });
      this.#deps.logger.warn(
        {
          registry: req.registry.host,
          name: target.name,
          expected: expected.toString(),
          actual: actual.toString(),
        },
        'upstream manifest does not match its digest',
      );
      throw new MirrorError(
        'DIGEST_INVALID',
        502,
        `the upstream sent a manifest that does not match ${expected.toString()}`,
      );
    }
    const mediaType = headerValue(response.headers, 'content-type');
    await store.putSmall(actual, bytes, mediaType);
    sendManifest(reply, 'GET', bytes, mediaType, actual);
  }

  async #blob(name: string, digest: Digest, req: PullRequest, reply: FastifyReply): Promise<void> {
    const { downloads, metrics } = this.#deps;
    const cached = await this.#fromCache(digest, req, reply);
    metrics.cacheHits.inc({ kind: 'blob', result: cached ? 'hit' : 'miss' });
    if (cached) {
      return;
    }
    const path = `/v2/${name}/blobs/${digest.toString()}`;
    if (req.method === 'HEAD') {
      await passThrough(
        reply,
        await this.#request(req, 'blob', path, { authorization: req.authorization }),
      );
      return;
    }
    const flight = await downloads.join(digest, (signal) =>
      this.#request({ ...req, signal }, 'blob', path, { authorization: req.authorization }),
    );
    if (flight.kind === 'answer') {
      await passThrough(reply, flight.response);
      return;
    }
    const { download } = flight;
    const range = download.size === undefined ? undefined : parseRange(req.range, download.size);
    const stream = download.openReader(
      range?.start ?? 0,
      range === undefined ? undefined : range.end + 1,
    );
    if (stream === undefined) {
      // It finished between our look at the cache and now: it is in the cache.
      if (await this.#fromCache(digest, req, reply)) {
        return;
      }
      throw new MirrorError(
        'BLOB_UNKNOWN',
        503,
        `${digest.toString()} could not be fetched; retry`,
      );
    }
    this.#count(stream, 'download');
    sendBlob(reply, digest, download.size, range, stream);
  }

  /** Serves a cached blob; false when it is not cached. */
  async #fromCache(digest: Digest, req: PullRequest, reply: FastifyReply): Promise<boolean> {
    const opened = await this.#deps.store.open(digest);
    if (opened === undefined) {
      return false;
    }
    let range: ByteRange | undefined;
    try {
      range = parseRange(req.range, opened.size);
    } catch (error) {
      await opened.release();
      throw error;
    }
    if (req.method === 'HEAD') {
      await opened.release();
      sendBlob(reply, digest, opened.size, range, undefined);
      return true;
    }
    const stream = opened.handle.createReadStream({
      start: range?.start ?? 0,
      end: range?.end ?? Math.max(0, opened.size - 1),
      autoClose: false,
      highWaterMark: 64 * 1024,
    });
    stream.once('close', () => void opened.release());
    this.#count(stream, 'cache');
    if (opened.size === 0) {
      // A zero-length blob: close the file at once and send nothing.
      stream.destroy();
      sendBlob(reply, digest, 0, range, undefined);
    } else {
      sendBlob(reply, digest, opened.size, range, stream);
    }
    return true;
  }

  #count(stream: Readable, from: 'cache' | 'download'): void {
    const counter = this.#deps.metrics.servedBytes.labels({ from });
    stream.on('data', (chunk: Buffer) => counter.inc(chunk.length));
  }

  async #request(
    req: PullRequest,
    kind: 'manifest' | 'blob',
    path: string,
    headers: Record<string, string | undefined>,
  ): Promise<UpstreamResponse> {
    const { upstream, metrics } = this.#deps;
    const registry = req.registry.host;
    try {
      const response = await upstream.request({
        registry: req.registry,
        method: req.method === 'HEAD' || kind === 'manifest' ? req.method : 'GET',
        path,
        headers,
        signal: req.signal,
      });
      metrics.upstreamRequests.inc({ registry, kind, status: String(response.status) });
      return response;
    } catch (error) {
      metrics.upstreamRequests.inc({
        registry,
        kind,
        status: isAbortError(error) ? 'aborted' : 'error',
      });
      const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
      throw new MirrorError('UNAVAILABLE', 502, `upstream ${registry} did not answer: ${reason}`, {
        cause: error,
      });
    }
  }
}

/** The digest an upstream announces in Docker-Content-Digest, if it is one we can check. */
function announcedDigest(headers: UpstreamResponse['headers']): Digest | undefined {
  const value = headerValue(headers, 'docker-content-digest');
  if (value === undefined) {
    return undefined;
  }
  try {
    return parseDigest(value);
  } catch {
    return undefined;
  }
}

function sendManifest(
  reply: FastifyReply,
  method: 'GET' | 'HEAD',
  bytes: Buffer,
  mediaType: string | undefined,
  digest: Digest,
): void {
  reply
    .code(200)
    .header('content-type', mediaType ?? 'application/vnd.oci.image.manifest.v1+json')
    .header('docker-content-digest', digest.toString())
    .header('etag', `"${digest.toString()}"`)
    .header('content-length', bytes.length);
  reply.send(method === 'HEAD' ? undefined : bytes);
}

function sendBlob(
  reply: FastifyReply,
  digest: Digest,
  size: number | undefined,
  range: ByteRange | undefined,
  body: Readable | undefined,
): void {
  reply
    .header('content-type', 'application/octet-stream')
    .header('docker-content-digest', digest.toString())
    .header('etag', `"${digest.toString()}"`)
    .header('accept-ranges', 'bytes');
  if (range !== undefined && size !== undefined) {
    reply
      .code(206)
      .header('content-range', `bytes ${range.start}-${range.end}/${size}`)
      .header('content-length', range.end - range.start + 1);
  } else {
    reply.code(200);
    if (size !== undefined) {
      reply.header('content-length', size);
    }
  }
  reply.send(body);
}

/** Sends an upstream's answer (an error, a challenge, a HEAD) to the client as it came. */
async function passThrough(reply: FastifyReply, response: UpstreamResponse): Promise<void> {
  reply.code(response.status);
  for (const name of PASSED_HEADERS) {
    const value = response.headers[name];
    if (value !== undefined) {
      reply.header(name, value);
    }
  }
  if (reply.request.method === 'HEAD') {
    response.body.destroy();
    reply.send();
    return;
  }
  const body = await readLimited(response.body, MAX_PASSED_BODY_BYTES, () => undefined);
  reply.header('content-length', body.length);
  reply.send(body);
}

/**
 * Reads a small body whole; past `limit` bytes it stops and throws what `tooLarge` returns,
 * or returns the first `limit` bytes when that is undefined.
 */
async function readLimited(
  body: Readable,
  limit: number,
  tooLarge: () => Error | undefined,
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    length += chunk.length;
    if (length > limit) {
      body.destroy();
      const error = tooLarge();
      if (error !== undefined) {
        throw error;
      }
      return Buffer.concat(chunks).subarray(0, limit);
    }
  }
  return Buffer.concat(chunks);
}
