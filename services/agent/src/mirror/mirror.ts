/**
 * The pull side of the OCI distribution API, answered from the cache or the upstream.
 *
 * Tags are resolved at the upstream on every request, with the client's own credentials;
 * its `401` + `WWW-Authenticate` challenge is passed back so the client authenticates as it
 * would against the registry. Content addressed by digest is served from the cache once it
 * has been verified; otherwise it is fetched (one upstream fetch per blob, however many
 * clients ask), verified, cached and streamed. Before any content by digest is served, the
 * authorizer checks that the registry would serve it to this client (see `authz/`).
 */

import { digestOf, parseDigest, type Digest, type DigestAlgorithm } from '@shoal/proto';
import { markSpan, untilAborted, type Logger } from '@shoal/runtime';
import type { FastifyReply } from 'fastify';
import { Readable } from 'node:stream';

import type { Authorizer } from '../authz/authorizer.js';
import type { FsContentStore } from '../cache/content-store.js';
import type { DiskHeadroom, TightReason } from '../cache/disk-headroom.js';
import {
  ContentMismatchError,
  SourcesFailedError,
  type BlobDownload,
  type ByteCursor,
  type OriginSource,
} from '../cache/download.js';
import type { DownloadTable, Flight } from '../cache/download-table.js';
import type { AgentMetrics } from '../metrics.js';
import { ByteTally, reportBlob, type BlobLedger } from '../provenance/ledger.js';
import {
  headerValue,
  readAnswer,
  readLimited,
  registryUrl,
  UpstreamAnswerError,
  type UpstreamAnswer,
  type UpstreamRegistry,
  type UpstreamResponse,
} from '@shoal/registry';
import type { RegistryRequests } from '../upstream/registry-requests.js';
import type { BlobFetcher, BlobTarget } from '../upstream/origin-fetcher.js';
import { CACHE_PUMP, pumpBody, STREAM_PUMP } from './body.js';
import { MirrorError, ociErrorBody } from './errors.js';
import { passThroughCursor, type LentBody } from './pass-through.js';
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
  /** Where blobs that are not cached come from: the origin, or the swarm. */
  readonly fetcher: BlobFetcher;
  readonly requests: RegistryRequests;
  /** Checks the client's right to content by digest; undefined when the check is off. */
  readonly authz: Authorizer | undefined;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  /** Largest manifest accepted from an upstream, in bytes. */
  readonly maxManifestBytes: number;
  /**
   * Time for the upstream to answer the API version check that `/v2/` relays, in ms: past
   * it the mirror answers for itself.
   */
  readonly pingTimeoutMs: number;
  /** Where blobs' bytes came from; cache hits are recorded here. */
  readonly ledger?: BlobLedger;
  /**
   * Whether the cache's disk has room; when it has not, blobs pass through from the origin
   * uncached. Undefined: always cache.
   */
  readonly disk?: DiskHeadroom;
}

/**
 * The authorizer's verdict as the mirror acts on it. `once`: a yes for this request only, the
 * content served vouching for nothing, and with `size` for a blob of that size only (see
 * `AuthzDecision`).
 */
type Verdict =
  | { readonly kind: 'allowed'; readonly once?: { readonly size?: number } }
  | { readonly kind: 'upstream' }
  | { readonly kind: 'refused' };

/** A client's cursor over a download, with the blob's size and the range it asked for. */
interface OpenedDownload {
  readonly cursor: ByteCursor;
  readonly size: number;
  readonly range: ByteRange | undefined;
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
  // The referrers API: which of the client's filters the registry applied.
  'oci-filters-applied',
];

/** What the mirror remembers of a registry's `/v2/` answers (see `Mirror.ping`). */
interface PingMemory {
  /** The registry's last challenge (a 401), and when it came (ms since the epoch). */
  challenge?: { readonly answer: UpstreamAnswer; readonly at: number };
  /** Until when (ms since the epoch) the registry is not asked: it did not answer. */
  unreachableUntil?: number | undefined;
}

/** How long a registry's last `/v2/` challenge is answered for it while it cannot be asked. */
const PING_CHALLENGE_TTL_MS = 10 * 60_000;
/** How long a registry that did not answer its `/v2/` check is not asked again. */
const PING_UNREACHABLE_MS = 15_000;

export class Mirror {
  readonly #deps: MirrorDeps;
  /** Per configured registry host (so bounded by the configuration). */
  readonly #pings = new Map<string, PingMemory>();

  constructor(deps: MirrorDeps) {
    this.#deps = deps;
  }

  /**
   * Answers the API version check (`GET /v2/`) for `registry`. Clients that talk to the mirror
   * as a registry (skopeo, docker, crane) learn from this answer whether and how to
   * authenticate: they send credentials only after a `401` challenge here. So the registry's
   * own check is made with the client's header and a `401` is passed back with its challenge.
   * When the registry cannot answer (an error, a 5xx, nothing within `pingTimeoutMs`), a
   * client that sent no credentials gets the challenge the registry gave last (so it still
   * sends them and private pulls keep working from the cache and the swarm); one that sent
   * some, or when there is no challenge to give, gets the mirror's own `200`: the mirror
   * serves public content whatever the registry's health. A registry that did not answer is
   * not asked again for `PING_UNREACHABLE_MS`, so clients' checks do not each wait it out.
   */
  async ping(
    registry: UpstreamRegistry,
    authorization: string | undefined,
    signal: AbortSignal,
    reply: FastifyReply,
  ): Promise<void> {
    const known = this.#pings.get(registry.host) ?? {};
    this.#pings.set(registry.host, known);
    let answer: UpstreamAnswer | undefined;
    if ((known.unreachableUntil ?? 0) <= Date.now()) {
      answer = await this.#askPing(registry, authorization, signal, known);
    }
    if (answer?.status === 401) {
      known.challenge = { answer, at: Date.now() };
      sendAnswer(reply, withErrorBody(answer, 'blob'));
      return;
    }
    const remembered = known.challenge;
    const failed = answer === undefined || answer.status >= 500;
    // Only a client that sent no credentials is challenged for the registry: one that sent
    // some (docker login, a client checking again with its token) would be told they are
    // wrong when nobody could check them. It gets the yes; every pull is still authorized on
    // its own.
    if (
      failed &&
      authorization === undefined &&
      remembered !== undefined &&
      Date.now() - remembered.at < PING_CHALLENGE_TTL_MS
    ) {
      sendAnswer(reply, withErrorBody(remembered.answer, 'blob'));
      return;
    }
    reply.code(200).send({});
  }

  /**
   * The referrers API (`/v2/<name>/referrers/<digest>`, OCI distribution 1.1: the signatures,
   * SBOMs and attestations attached to a manifest), passed through with the client's own
   * credentials and its query (the `artifactType` filter, a next page's parameters): like a
   * tag, the list changes as artifacts are pushed, so it is asked of the registry every time
   * and never cached. A registry without the API answers 404, and clients then fall back to the
   * tag scheme (`sha256-<hex>` tags). A long list comes in pages, the next one named in `Link`:
   * it is passed on pointing at the mirror (see `mirrorLink`).
   */
  async referrers(
    registry: UpstreamRegistry,
    name: string,
    digest: Digest,
    query: URLSearchParams,
    req: Pick<PullRequest, 'method' | 'accept' | 'authorization' | 'signal'>,
    reply: FastifyReply,
  ): Promise<void> {
    const search = query.size === 0 ? '' : `?${query.toString()}`;
    const path = `/v2/${name}/referrers/${digest.toString()}${search}`;
    const response = await this.#deps.requests.send({
      registry,
      method: req.method,
      kind: 'referrers',
      path,
      headers: { accept: req.accept, authorization: req.authorization },
      signal: req.signal,
    });
    const link = mirrorLink(headerValue(response.headers, 'link'), registry, path);
    if (link !== undefined) {
      reply.header('link', link);
    }
    if (response.status !== 200 || req.method === 'HEAD') {
      sendAnswer(reply, await readAnswer(response));
      return;
    }
    const bytes = await readLimited(response.body, this.#deps.maxManifestBytes, () => {
      return new MirrorError(
        'MANIFEST_INVALID',
        502,
        `the upstream referrers list is larger than ${this.#deps.maxManifestBytes} bytes`,
      );
    });
    sendAnswer(reply, { status: response.status, headers: response.headers, body: bytes });
  }

  /**
   * Asks the registry's `/v2/`; undefined when it did not answer in time, and then `known`
   * marks it unreachable for a while. Logged at info once per outage (a flood of client
   * checks while the registry is down would say the same thing each time), then at debug.
   */
  async #askPing(
    registry: UpstreamRegistry,
    authorization: string | undefined,
    signal: AbortSignal,
    known: PingMemory,
  ): Promise<UpstreamAnswer | undefined> {
    try {
      const response = await this.#deps.requests.send({
        registry,
        method: 'GET',
        kind: 'ping',
        path: '/v2/',
        headers: { authorization },
        signal: AbortSignal.any([signal, AbortSignal.timeout(this.#deps.pingTimeoutMs)]),
      });
      const answer = await readAnswer(response);
      known.unreachableUntil = undefined;
      return answer;
    } catch (error) {
      if (signal.aborted) {
        // The client went away: that says nothing about the registry.
        return undefined;
      }
      const level = known.unreachableUntil === undefined ? 'info' : 'debug';
      known.unreachableUntil = Date.now() + PING_UNREACHABLE_MS;
      this.#deps.logger[level](
        { registry: registry.host, err: error },
        'the registry did not answer its API version check: the mirror answers for itself',
      );
      return undefined;
    }
  }

  /**
   * Answers one pull request on `reply`. Resolves once the answer has been handed to fastify
   * (a streamed body may still be flowing); the route returns `reply` after it.
   */
  async pull(target: PullTarget, req: PullRequest, reply: FastifyReply): Promise<void> {
    // Authorization before bytes: whatever holds the content, the registry decides who gets it.
    const verdict = await this.#authorized(target, req, reply);
    if (verdict.kind === 'refused') {
      return;
    }
    if (target.kind === 'manifest') {
      return this.#manifest(target, req, reply, verdict);
    }
    return verdict.kind === 'upstream'
      ? this.#blobUpstream(target.name, target.digest, req, reply)
      : this.#blob(target.name, target.digest, req, reply, verdict.once?.size);
  }

  /**
   * Whether a client sending `authorization` may be told of `digest` as pulled under
   * `repository` of `registry`: the registry would serve it the blob. Without an authorizer,
   * anyone may.
   */
  async mayDescribe(
    registry: UpstreamRegistry,
    repository: string,
    digest: Digest,
    authorization: string | undefined,
  ): Promise<boolean> {
    const { authz } = this.#deps;
    if (authz === undefined) {
      return true;
    }
    const size = this.#deps.store.sizeOf(digest);
    const decision = await authz.check({
      registry,
      repository,
      kind: 'blob',
      digest,
      authorization,
      ...(size === undefined ? {} : { size }),
    });
    return (
      decision.kind === 'allow' &&
      (decision.once?.size === undefined || decision.once.size === size)
    );
  }

  /**
   * Checks content by digest with the authorizer; on a refusal answers the client (the
   * registry's own 401 challenge, 403 or 404) and returns `refused`. `upstream`: the content
   * may go to this client only as the registry serves it (see `AuthzDecision`). A tag needs no
   * check: it is resolved at the registry with the client's credentials.
   */
  async #authorized(target: PullTarget, req: PullRequest, reply: FastifyReply): Promise<Verdict> {
    const { authz } = this.#deps;
    const digest =
      target.kind === 'blob'
        ? target.digest
        : target.reference.kind === 'digest'
          ? target.reference.digest
          : undefined;
    if (authz === undefined || digest === undefined) {
      return { kind: 'allowed' };
    }
    const size =
      target.kind === 'blob'
        ? (this.#deps.store.sizeOf(digest) ?? this.#deps.downloads.running(digest)?.size)
        : undefined;
    const decision = await authz.check({
      registry: req.registry,
      repository: target.name,
      kind: target.kind,
      digest,
      authorization: req.authorization,
      ...(size === undefined ? {} : { size }),
    });
    if (decision.kind === 'allow') {
      return decision.once === undefined
        ? { kind: 'allowed' }
        : { kind: 'allowed', once: decision.once };
    }
    if (decision.kind === 'upstream') {
      return { kind: 'upstream' };
    }
    if (decision.kind === 'deny') {
      sendAnswer(reply, withErrorBody(decision.answer, target.kind));
      return { kind: 'refused' };
    }
    if (decision.answer !== undefined) {
      sendAnswer(reply, withErrorBody(decision.answer, target.kind));
      return { kind: 'refused' };
    }
    throw new MirrorError(
      'UNAVAILABLE',
      503,
      `authorization could not be checked at ${req.registry.host}: ${decision.reason}`,
    );
  }

  /**
   * A manifest by tag, or by digest as `verdict` allows: an `upstream` one is read from the
   * registry, not the cache. What it names is learned as the repository's only when the
   * registry itself vouched for it: a digest allowed on the registry's word, or a tag the
   * registry answered itself, naming the digest of what it sent.
   */
  async #manifest(
    target: Extract<PullTarget, { kind: 'manifest' }>,
    req: PullRequest,
    reply: FastifyReply,
    verdict: Exclude<Verdict, { kind: 'refused' }>,
  ): Promise<void> {
    const { store, metrics } = this.#deps;
    const { reference } = target;
    const vouched = verdict.kind === 'allowed' && verdict.once === undefined;
    if (reference.kind === 'digest' && verdict.kind !== 'upstream') {
      const cached = await store.getSmall(reference.digest, this.#deps.maxManifestBytes);
      metrics.cacheHits.inc({ kind: 'manifest', result: cached === undefined ? 'miss' : 'hit' });
      if (cached !== undefined) {
        if (vouched) {
          this.#deps.authz?.learnManifest(req.registry, target.name, cached.bytes);
        }
        const mediaType = manifestMediaType(cached.mediaType, cached.bytes);
        sendManifest(reply, req.method, cached.bytes, mediaType, reference.digest);
        return;
      }
    }
    const refText = reference.kind === 'tag' ? reference.tag : reference.digest.toString();
    const response = await this.#deps.requests.send({
      registry: req.registry,
      method: req.method,
      kind: 'manifest',
      path: `/v2/${target.name}/manifests/${refText}`,
      headers: { accept: req.accept, authorization: req.authorization },
      signal: req.signal,
    });
    // A tag's answer vouches when it is the registry's own (not from where it redirected the
    // request) and names the manifest's digest, as registries do: a login proxy answers anyone
    // 200 with its sign-in page, in place or where it redirects to.
    const tagVouched =
      reference.kind === 'tag' &&
      response.status === 200 &&
      response.redirected !== true &&
      announcedDigest(response.headers) !== undefined;
    if (tagVouched && req.method === 'HEAD') {
      // The registry just told this client the repository's manifest: remember it.
      this.#deps.authz?.learnAllowed(
        req.registry,
        target.name,
        req.authorization,
        announcedDigest(response.headers),
      );
    }
    if (response.status !== 200 || req.method === 'HEAD') {
      const answer = await readAnswer(response);
      sendAnswer(reply, response.status === 200 ? headWithoutVagueType(answer) : answer);
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
    const mediaType = manifestMediaType(headerValue(response.headers, 'content-type'), bytes);
    try {
      await store.putSmall(actual, bytes, mediaType);
    } catch (error) {
      // A full disk costs the cache this manifest, not the client its answer.
      if (this.#deps.disk?.noteFailure(error) !== true) {
        throw error;
      }
      metrics.passThroughs.inc({ reason: 'write-failed' });
      this.#deps.logger.warn(
        { digest: actual.toString() },
        'cache disk is full: the manifest is served uncached',
      );
    }
    if (tagVouched) {
      // The registry just served this client the repository's manifest, the one it named.
      this.#deps.authz?.learnAllowed(req.registry, target.name, req.authorization, expected);
    }
    if (tagVouched || (reference.kind === 'digest' && vouched)) {
      this.#deps.authz?.learnManifest(req.registry, target.name, bytes);
    }
    sendManifest(reply, 'GET', bytes, mediaType, actual);
  }

  /** `shownSize`: served from the node only when of this size (see `Verdict`). */
  async #blob(
    name: string,
    digest: Digest,
    req: PullRequest,
    reply: FastifyReply,
    shownSize: number | undefined,
  ): Promise<void> {
    const { downloads, metrics } = this.#deps;
    const cached = await this.#fromCache(name, digest, req, reply, shownSize);
    metrics.cacheHits.inc({ kind: 'blob', result: cached ? 'hit' : 'miss' });
    if (cached) {
      return;
    }
    if (req.method === 'HEAD') {
      await this.#headAtRegistry(name, digest, req, reply);
      return;
    }
    const target: BlobTarget = {
      registry: req.registry,
      name,
      digest,
      authorization: req.authorization,
    };
    // A full disk passes bytes through; a download already running has its file, so join it.
    const tight = await this.#deps.disk?.tight();
    if (tight !== undefined && downloads.running(digest) === undefined) {
      await this.#passThrough(target, req, reply, tight);
      return;
    }
    let flight: Flight;
    try {
      flight = await downloads.join(digest, (signal) => this.#deps.fetcher.start(target, signal));
    } catch (error) {
      if (this.#deps.disk?.noteFailure(error) === true) {
        await this.#passThrough(target, req, reply, 'write-failed');
        return;
      }
      throw error;
    }
    if (flight.kind === 'answer') {
      sendAnswer(reply, flight.answer);
      return;
    }
    const { download } = flight;
    // This client was just authorized for the blob: should the download have to go to the
    // origin late, its credentials may serve where the first client's no longer do. Only while
    // it reads: it withdraws them the moment it goes away (its read may be waiting on a
    // stalled swarm, which brings no progress to wake it), when its cursor closes, or when it
    // gets no cursor.
    const source = { registry: req.registry, name, authorization: req.authorization };
    const offered = download.offerSource(source);
    const onLeave = (): void => offered.withdraw();
    req.signal.addEventListener('abort', onLeave, { once: true });
    const withdraw = (): void => {
      req.signal.removeEventListener('abort', onLeave);
      offered.withdraw();
    };
    let opened: OpenedDownload | undefined;
    try {
      opened = await this.#openDownload(target, download, source, req, reply, shownSize);
    } finally {
      if (opened === undefined) {
        withdraw();
      }
    }
    if (opened === undefined) {
      return;
    }
    const { cursor: reading, size, range } = opened;
    await this.#send(
      reply,
      digest,
      size,
      range,
      this.#watchingDisk({
        read: (buffer) => reading.read(buffer),
        close: () => {
          withdraw();
          reading.close();
        },
      }),
      'download',
    );
  }

  /**
   * Waits for a download's size and opens this client's cursor over it; undefined once the
   * client has been answered otherwise (the origin's refusal of its own credential, the
   * cache, an uncached pass-through, the registry's own answer when the blob is not of
   * `shownSize`).
   */
  async #openDownload(
    target: BlobTarget,
    download: BlobDownload,
    source: OriginSource,
    req: PullRequest,
    reply: FastifyReply,
    shownSize: number | undefined,
  ): Promise<OpenedDownload | undefined> {
    const { digest, name } = target;
    let size: number;
    try {
      size = await untilAborted(download.sized, req.signal, () => new Error('client went away'));
    } catch (error) {
      if (error instanceof SourcesFailedError) {
        // Each reader its own registry's answer; none when its registry did not answer its
        // credential or was not asked: then it should retry (another registry's trouble,
        // status or Retry-After is not its own).
        const answer = error.answerFor(source);
        sendAnswer(
          reply,
          answer === undefined
            ? retryLater(
                `${digest.toString()} could not be fetched from ${req.registry.host}; retry`,
              )
            : withErrorBody(answer, 'blob'),
        );
        return undefined;
      }
      if (error instanceof UpstreamAnswerError) {
        sendAnswer(reply, error.answer);
        return undefined;
      }
      if (this.#deps.disk?.noteFailure(error) === true) {
        // The disk filled before this client got a byte: it gets the blob uncached.
        await this.#passThrough(target, req, reply, 'write-failed');
        return undefined;
      }
      throw new MirrorError('UNAVAILABLE', 502, `${digest.toString()} could not be fetched`, {
        cause: error,
      });
    }
    markSpan('blob size known');
    if (shownSize !== undefined && size !== shownSize) {
      await this.#notOfShownSize(name, digest, req, reply, size, shownSize);
      return undefined;
    }
    const range = parseRange(req.range, size);
    const cursor = download.openCursor(
      range?.start ?? 0,
      range === undefined ? undefined : range.end + 1,
    );
    if (cursor === undefined) {
      // It finished between our look at the cache and now: it is in the cache.
      if (await this.#fromCache(name, digest, req, reply, shownSize)) {
        return undefined;
      }
      throw new MirrorError(
        'BLOB_UNKNOWN',
        503,
        `${digest.toString()} could not be fetched; retry`,
      );
    }
    return { cursor, size, range };
  }

  /**
   * The origin's answer for a blob passed through: its body, lent blocks from the block
   * reader, and Content-Length; or the answer to hand back.
   */
  async #passThroughBody(
    target: BlobTarget,
    req: PullRequest,
  ): Promise<
    | { kind: 'body'; body: LentBody; length: string | undefined }
    | { kind: 'answer'; answer: UpstreamAnswer }
  > {
    const opened = await this.#deps.requests.openBlob({
      registry: req.registry,
      name: target.name,
      digest: target.digest,
      authorization: req.authorization,
      signal: req.signal,
    });
    if (opened.status !== 200) {
      return {
        kind: 'answer',
        answer: { status: opened.status, headers: opened.headers, body: opened.answer },
      };
    }
    return { kind: 'body', body: opened, length: opened.headers['content-length'] };
  }

  /**
   * A blob whose authorization came from a registry's redirect (see `AuthzDecision`): served
   * as the registry serves it, through the redirect, verified on the way and not cached;
   * never from the cache, a download, peers or the seed server. A HEAD is the registry's.
   */
  async #blobUpstream(
    name: string,
    digest: Digest,
    req: PullRequest,
    reply: FastifyReply,
  ): Promise<void> {
    if (req.method === 'HEAD') {
      await this.#headAtRegistry(name, digest, req, reply);
      return;
    }
    await this.#fromOrigin(
      { registry: req.registry, name, digest, authorization: req.authorization },
      req,
      reply,
    );
  }

  /**
   * The blob the node would serve is not of the size the registry showed where its redirect
   * led (see `Verdict`): what the registry showed was something else, so the client gets the
   * blob only as the registry serves it.
   */
  async #notOfShownSize(
    name: string,
    digest: Digest,
    req: PullRequest,
    reply: FastifyReply,
    size: number,
    shownSize: number,
  ): Promise<void> {
    this.#deps.metrics.authzDecisions.inc({ result: 'size-mismatch', cache: 'miss' });
    this.#deps.logger.info(
      { registry: req.registry.host, repository: name, digest: digest.toString(), size, shownSize },
      "content read from the registry: where its redirect led was an object of another size than the blob's",
    );
    await this.#blobUpstream(name, digest, req, reply);
  }

  /** Answers a blob HEAD with the registry's own answer to it. */
  async #headAtRegistry(
    name: string,
    digest: Digest,
    req: PullRequest,
    reply: FastifyReply,
  ): Promise<void> {
    const response = await this.#deps.requests.send({
      registry: req.registry,
      method: 'HEAD',
      kind: 'blob',
      path: `/v2/${name}/blobs/${digest.toString()}`,
      headers: { authorization: req.authorization },
      signal: req.signal,
    });
    sendAnswer(reply, await readAnswer(response));
  }

  /**
   * Sends a blob from the origin straight to the client, verified on the way but not cached:
   * the disk has no room for it.
   */
  async #passThrough(
    target: BlobTarget,
    req: PullRequest,
    reply: FastifyReply,
    reason: TightReason,
  ): Promise<void> {
    const { metrics, logger } = this.#deps;
    metrics.passThroughs.inc({ reason });
    logger.warn(
      { digest: target.digest.toString(), reason },
      'cache disk is full: passing the blob through uncached',
    );
    await this.#fromOrigin(target, req, reply);
  }

  /** Sends a blob from the origin straight to the client, verified on the way, not cached. */
  async #fromOrigin(target: BlobTarget, req: PullRequest, reply: FastifyReply): Promise<void> {
    const { metrics, logger } = this.#deps;
    const digest = target.digest;
    const answered = await this.#passThroughBody(target, req);
    if (answered.kind === 'answer') {
      sendAnswer(reply, withErrorBody(answered.answer, 'blob'));
      return;
    }
    const { body, length: announced } = answered;
    const length = Number(announced ?? Number.NaN);
    const stop = (): void => {
      if (body instanceof Readable) {
        body.destroy();
      } else {
        body.cancel(new Error('the pass-through was refused'));
      }
    };
    if (!Number.isSafeInteger(length) || length < 0) {
      stop();
      throw new MirrorError(
        'UNAVAILABLE',
        502,
        `the upstream sent ${digest.toString()} without a valid Content-Length`,
      );
    }
    let range: ByteRange | undefined;
    try {
      range = parseRange(req.range, length);
    } catch (error) {
      stop();
      throw error;
    }
    const cursor = passThroughCursor(body, digest, length, range);
    const tally = new ByteTally();
    sendBlobHeaders(reply, digest, length, range);
    const origin = metrics.fetchedBytes.labels({ source: 'origin' });
    const served = metrics.servedBytes.labels({ from: 'origin' });
    const outcome = { failed: false };
    await pumpBody(
      reply,
      reply.statusCode,
      {
        read: (buffer) =>
          cursor.read(buffer).catch((error: unknown) => {
            outcome.failed = true;
            if (error instanceof ContentMismatchError) {
              metrics.verificationFailures.inc({ kind: 'blob' });
            }
            throw error;
          }),
        close: () => cursor.close(),
      },
      (bytes) => {
        origin.inc(bytes);
        served.inc(bytes);
        tally.add('origin', bytes);
      },
      bodyLength(length, range),
    );
    if (this.#deps.ledger !== undefined) {
      reportBlob(this.#deps.ledger, logger, {
        digest: digest.toString(),
        image: `${req.registry.host}/${target.name}`,
        tally,
        outcome: outcome.failed ? 'failed' : 'verified',
      });
    }
  }

  /** A download's cursor that tells the disk watch when the download failed for want of room. */
  #watchingDisk(cursor: ByteCursor): ByteCursor {
    const disk = this.#deps.disk;
    if (disk === undefined) {
      return cursor;
    }
    return {
      read: (buffer) =>
        cursor.read(buffer).catch((error: unknown) => {
          disk.noteFailure(error);
          throw error;
        }),
      close: () => cursor.close(),
    };
  }

  /** Serves a cached blob; false when it is not cached. */
  async #fromCache(
    name: string,
    digest: Digest,
    req: PullRequest,
    reply: FastifyReply,
    shownSize: number | undefined,
  ): Promise<boolean> {
    const opened = await this.#deps.store.open(digest);
    if (opened === undefined) {
      return false;
    }
    if (shownSize !== undefined && opened.size !== shownSize) {
      await opened.release();
      await this.#notOfShownSize(name, digest, req, reply, opened.size, shownSize);
      return true;
    }
    let range: ByteRange | undefined;
    try {
      range = parseRange(req.range, opened.size);
    } catch (error) {
      await opened.release();
      throw error;
    }
    if (req.method === 'HEAD' || opened.size === 0) {
      await opened.release();
      sendBlobHeaders(reply, digest, opened.size, range).send();
      return true;
    }
    const start = range?.start ?? 0;
    const end = range === undefined ? opened.size : range.end + 1;
    let position = start;
    const cursor: ByteCursor = {
      read: async (buffer) => {
        const length = Math.min(buffer.length, end - position);
        if (length <= 0) {
          return 0;
        }
        const { bytesRead } = await opened.handle.read(buffer, 0, length, position);
        if (bytesRead === 0) {
          throw new Error(`short read at ${position} of ${digest.toString()}`);
        }
        position += bytesRead;
        return bytesRead;
      },
      close: () => void opened.release(),
    };
    const tally = new ByteTally();
    await this.#send(reply, digest, opened.size, range, cursor, 'cache');
    if (this.#deps.ledger !== undefined) {
      tally.add('cache', position - start);
      reportBlob(this.#deps.ledger, this.#deps.logger, {
        digest: digest.toString(),
        image: `${req.registry.host}/${name}`,
        tally,
        outcome: 'cache',
      });
    }
    return true;
  }

  /** Streams a blob body from `cursor` with the blob headers, counting the bytes served. */
  async #send(
    reply: FastifyReply,
    digest: Digest,
    size: number,
    range: ByteRange | undefined,
    cursor: ByteCursor,
    from: 'cache' | 'download',
  ): Promise<void> {
    const { metrics } = this.#deps;
    const served = metrics.servedBytes.labels({ from });
    // Bytes by source: a cache hit is the fourth source beside origin, seed and peer, which
    // are counted as they are received.
    const fromCache =
      from === 'cache' ? metrics.fetchedBytes.labels({ source: 'cache' }) : undefined;
    sendBlobHeaders(reply, digest, size, range);
    await pumpBody(
      reply,
      reply.statusCode,
      cursor,
      (bytes) => {
        served.inc(bytes);
        fromCache?.inc(bytes);
      },
      bodyLength(size, range),
      from === 'cache' ? CACHE_PUMP : STREAM_PUMP,
    );
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

/** Content types that say a body is JSON (or bytes) but not which manifest it is. */
const GENERIC_TYPES = new Set(['application/json', 'text/plain', 'application/octet-stream']);

/** Whether a manifest answer's Content-Type names what the manifest is. */
function namesManifestType(header: string | undefined): boolean {
  const given = header?.split(';')[0]?.trim().toLowerCase();
  return given !== undefined && given !== '' && !GENERIC_TYPES.has(given);
}

/**
 * A manifest HEAD's answer as passed on: when the registry gave no Content-Type (or a generic
 * one), without its digest and length too. containerd builds its descriptor from a HEAD that
 * has a digest and a length, and would take an empty (or schema 1) type from it and fail the
 * pull; without them it asks a GET, which the agent labels by what the manifest is.
 */
function headWithoutVagueType(answer: UpstreamAnswer): UpstreamAnswer {
  if (namesManifestType(headerValue(answer.headers, 'content-type'))) {
    return answer;
  }
  const headers = { ...answer.headers };
  delete headers['docker-content-digest'];
  delete headers['content-length'];
  return { ...answer, headers };
}

/**
 * The media type to answer a manifest with: the registry's Content-Type, unless it sent none
 * or a generic one (some repository managers and static-file registries do), then the one the
 * manifest names itself, else an index if it lists manifests, else an image manifest. A
 * manifest list labelled as an image manifest would make containerd read it as one and find
 * no layers.
 */
export function manifestMediaType(header: string | undefined, bytes: Buffer): string {
  if (header !== undefined && namesManifestType(header)) {
    return header;
  }
  let body: unknown;
  try {
    body = JSON.parse(bytes.toString('utf8'));
  } catch {
    return header ?? 'application/vnd.oci.image.manifest.v1+json';
  }
  const { mediaType, manifests } =
    typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {};
  if (typeof mediaType === 'string' && /^[\x21-\x7e]+$/.test(mediaType)) {
    return mediaType;
  }
  return Array.isArray(manifests)
    ? 'application/vnd.oci.image.index.v1+json'
    : 'application/vnd.oci.image.manifest.v1+json';
}

function sendManifest(
  reply: FastifyReply,
  method: 'GET' | 'HEAD',
  bytes: Buffer,
  mediaType: string,
  digest: Digest,
): void {
  reply
    .code(200)
    .header('content-type', mediaType)
    .header('docker-content-digest', digest.toString())
    .header('etag', `"${digest.toString()}"`)
    .header('content-length', bytes.length);
  reply.send(method === 'HEAD' ? undefined : bytes);
}

/** Bytes a blob answer's body has: the blob's, or the range's. */
function bodyLength(size: number, range: ByteRange | undefined): number {
  return range === undefined ? size : range.end - range.start + 1;
}

/** Sets the status and headers of a blob answer (200, or 206 for a range). */
function sendBlobHeaders(
  reply: FastifyReply,
  digest: Digest,
  size: number,
  range: ByteRange | undefined,
): FastifyReply {
  reply
    .header('content-type', 'application/octet-stream')
    .header('docker-content-digest', digest.toString())
    .header('etag', `"${digest.toString()}"`)
    .header('accept-ranges', 'bytes');
  if (range !== undefined) {
    return reply
      .code(206)
      .header('content-range', `bytes ${range.start}-${range.end}/${size}`)
      .header('content-length', bodyLength(size, range));
  }
  return reply.code(200).header('content-length', size);
}

/** Sends an upstream's answer (an error, a challenge, a HEAD) to the client as it came. */
function sendAnswer(reply: FastifyReply, answer: UpstreamAnswer): void {
  reply.code(answer.status);
  for (const name of PASSED_HEADERS) {
    const value = answer.headers[name];
    if (value !== undefined) {
      reply.header(name, value);
    }
  }
  if (reply.request.method === 'HEAD') {
    reply.send();
    return;
  }
  reply.header('content-length', answer.body.length);
  reply.send(answer.body);
}

/**
 * A registry's `Link` header (the referrers API's next page, `<url>; rel="next"`) rewritten to
 * the mirror: the same path and query below `/v2/`, with `ns=` naming the registry, so that a
 * client following it comes back through the mirror and its credentials stay with it. A link
 * that does not lead to the registry's own `/v2/` API (another host) cannot be followed through
 * the mirror and is left out. `path`: the request's path below the registry's base URL, which
 * relative links are resolved against. Undefined when no link is left.
 */
export function mirrorLink(
  value: string | undefined,
  registry: UpstreamRegistry,
  path: string,
): string | undefined {
  if (value === undefined) {
    return undefined;
  }
  const base = registryUrl(registry, path);
  const apiRoot = registryUrl(registry, '/v2/').pathname;
  const links: string[] = [];
  // Links are comma-separated; a URL in angle brackets holds no unescaped '>'.
  for (const match of value.matchAll(/<([^>]*)>([^,]*)/g)) {
    const [, target = '', params = ''] = match;
    let url: URL;
    try {
      url = new URL(target, base);
    } catch {
      continue;
    }
    if (url.origin !== base.origin || !url.pathname.startsWith(apiRoot)) {
      continue;
    }
    url.searchParams.delete('ns');
    url.searchParams.append('ns', registry.host);
    links.push(`</v2/${url.pathname.slice(apiRoot.length)}${url.search}>${params}`);
  }
  return links.length === 0 ? undefined : links.join(', ');
}

/** Seconds a client is asked to wait (Retry-After) when the origin could not be read for it. */
const RETRY_AFTER_S = 5;

/** A 503 with Retry-After and the OCI error body: the client should try again shortly. */
function retryLater(message: string): UpstreamAnswer {
  const body = Buffer.from(ociErrorBody('UNAVAILABLE', message));
  return {
    status: 503,
    headers: { 'content-type': 'application/json', 'retry-after': String(RETRY_AFTER_S) },
    body,
  };
}

/**
 * A refusal learnt from a HEAD has no body; a GET client gets the spec's error body with it.
 */
function withErrorBody(answer: UpstreamAnswer, kind: 'blob' | 'manifest'): UpstreamAnswer {
  if (answer.body.length > 0) {
    return answer;
  }
  const code =
    answer.status === 401
      ? 'UNAUTHORIZED'
      : answer.status === 403
        ? 'DENIED'
        : answer.status === 404
          ? kind === 'blob'
            ? 'BLOB_UNKNOWN'
            : 'MANIFEST_UNKNOWN'
          : answer.status === 429
            ? 'TOOMANYREQUESTS'
            : 'UNAVAILABLE';
  return {
    status: answer.status,
    headers: { ...answer.headers, 'content-type': 'application/json' },
    body: Buffer.from(ociErrorBody(code, `the registry answered ${answer.status}`)),
  };
}
