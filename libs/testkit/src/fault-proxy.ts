/**
 * An HTTP proxy in front of a real registry that misbehaves on demand, for faults a real
 * registry cannot be told to show: answering 429 or 5xx, answering slowly, down (every
 * connection reset), or damaging blob bodies (cut mid-stream, a byte flipped). Without a fault
 * it passes every request and response through unchanged, streaming both ways with
 * back-pressure; the registry behind it is the real one, so what the clients get once the
 * fault heals is what the registry serves.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import {
  Agent,
  createServer,
  request as httpRequest,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import { Transform, pipeline, type TransformCallback } from 'node:stream';

import { urlHost } from './process.js';

/** What the proxy does to requests while a fault is set. */
export type RegistryFault =
  /**
   * Every new request is answered at once with one of `statuses` (in turn) and an OCI error
   * body; the registry never sees it. A 429 carries `Retry-After: retryAfterS`.
   */
  | {
      readonly kind: 'status';
      readonly statuses: readonly number[];
      /**
       * Seconds in the 429's `Retry-After` header (default 1); null sends none (Docker Hub's
       * pull limit, ECR's and GCR's throttling answer without one).
       */
      readonly retryAfterS?: number | null;
      /**
       * Only requests with these methods meet the fault (a registry that rate-limits GETs but
       * not HEADs, as Docker Hub counts pulls); others pass. Default: every method.
       */
      readonly methods?: readonly string[];
      /**
       * Only requests whose path (below any `pathPrefix`) matches meet the fault (Docker Hub
       * rate-limits manifest GETs only: `/\/manifests\//`). Default: every path.
       */
      readonly paths?: RegExp;
      /**
       * Only the first `times` requests meeting the fault are answered with a status; later
       * ones pass as if healed (a single 503 SlowDown). Default: every request.
       */
      readonly times?: number;
    }
  /**
   * Every new request waits `delayMs` before it is forwarded, and every response body (those
   * in flight included) shares `rateBytes` bytes per second (Infinity: no limit), as over a
   * congested link.
   */
  | {
      readonly kind: 'slow';
      readonly delayMs: number;
      readonly rateBytes: number;
      /**
       * Request bodies share the link too (those sent from now on), as uploads to an object
       * gateway over a slow link. Default: only response bodies.
       */
      readonly uploads?: boolean;
      /**
       * Only requests with these methods wait (a registry quick to answer a HEAD that fetches
       * a blob from its own storage before it answers the GET). Default: every method.
       */
      readonly methods?: readonly string[];
    }
  /** Every new request has its connection reset, as a registry that is down or restarting. */
  | { readonly kind: 'down' }
  /**
   * Nothing moves: bodies in flight stop and new requests wait unanswered, as with a host that
   * vanished (packets dropped, connections left open). Healed, everything goes on where it
   * stopped, as after a short outage.
   */
  | {
      readonly kind: 'silent';
      /**
       * Only requests with these methods (new ones, and the response bodies of those in
       * flight; a request body already being sent goes on) meet the silence: an S3 gateway
       * that answers reads and leaves its uploads hanging (`['PUT', 'POST']`). Default: every
       * method.
       */
      readonly methods?: readonly string[];
    }
  /**
   * Every new blob GET answered 200 or 206 has its body damaged at `atByte` (counted from the
   * body's start): `cut` closes the connection there, short of the announced length, as a
   * registry or load balancer dropping a transfer; `flip` flips the bits of that byte and
   * passes the rest, as a proxy or storage handing out wrong bytes under the right digest;
   * `stall` sends the bytes before it and then nothing more, the connection left open, as a
   * server frozen mid-transfer (until the client gives up).
   * With `resumeDelayMs`, a GET with a Range header (a resume) is instead held that long, then
   * forwarded undamaged: a registry slow to answer the rest (one fetching it again from its
   * own storage, or from upstream).
   * With `resumeStatus`, once a body was cut or stalled under this fault, every GET with a
   * Range header (a resume, of any blob, with any credential) is answered that status instead
   * (a 401 with a Basic challenge): a registry refusing the rest to a token that expired
   * mid-transfer. With `resumeDelayMs` too, such a GET is held that long before either (its
   * forwarding before the first cut, its refusal after).
   */
  | {
      readonly kind: 'damage';
      readonly how: 'cut' | 'flip' | 'stall';
      readonly atByte: number;
      readonly resumeDelayMs?: number;
      readonly resumeStatus?: number;
    }
  /**
   * Every new blob GET the registry would answer 200 (or 206) is answered `status` (307 by default) to
   * the proxy's storage front instead, a listener on another port (another origin), with a
   * signed query (`X-Amz-Signature`, `X-Amz-Expires`) as Docker Hub, ECR, GCR and ghcr send
   * their clients to S3 or a CDN. The storage front serves the blob (Range too) from the
   * registry for a valid signature; like S3 it answers 400 to a request that also carries an
   * Authorization header, and 403 `AccessDenied` to a signature it does not know or that has
   * expired. The first `expired` signed URLs handed out are already expired when used; the
   * first `cutAtByte` answer's body (if set) is cut at that byte of it, as a CDN dropping a
   * transfer.
   */
  /**
   * Every new manifest answer loses these response headers (lowercase names), as registries
   * that send no `Docker-Content-Digest`, or a HEAD without `Content-Length`, answer.
   */
  | { readonly kind: 'drop-headers'; readonly names: readonly string[] }
  /**
   * Bearer tokens the proxy has seen so far (`every`: all Authorization headers, those to come
   * too) are taken off the requests that carry them before they are forwarded, so the real
   * registry answers its own 401 challenge, as it does to a token that expired or was revoked
   * mid-pull. A registry checks a token's expiry with a minute's leeway, too long to wait for.
   */
  | { readonly kind: 'expire-tokens'; readonly every?: boolean }
  | {
      readonly kind: 'redirect';
      readonly status?: 302 | 307;
      readonly expired?: number;
      readonly cutAtByte?: number;
    };

/** What the proxy has done so far. */
export interface FaultProxyCounts {
  /** Requests forwarded to the registry. */
  readonly forwarded: number;
  /** Requests answered by the fault (a 429 or 5xx, or a reset) without reaching the registry. */
  readonly refused: number;
  /** Requests that arrived while a slow fault was set. */
  readonly slowed: number;
  /** Response body bytes passed back to clients. */
  readonly bytes: number;
  /** Blob bodies a damage fault cut or flipped. */
  readonly damaged: number;
  /** Blob GETs a redirect fault sent to the storage front. */
  readonly redirected: number;
}

/** A request as it reached the proxy, whether or not a fault answered it. */
export interface ProxiedRequest {
  readonly method: string;
  readonly url: string;
  /** The Authorization header it carried, if any: which credentials reached this registry. */
  readonly authorization: string | undefined;
  /** Its Range header, if any. */
  readonly range: string | undefined;
}

/** A request that reached the storage front of a redirect fault. */
export interface StorageRequest extends ProxiedRequest {
  /** How the storage front answered it. */
  readonly status: number;
  /** The registry path its signature stands for (`/v2/<name>/blobs/<digest>`), if known. */
  readonly signedFor: string | undefined;
}

export interface FaultProxy {
  /** `http://<host>:<port>`: what clients use as the registry's URL. */
  readonly url: string;
  /** The storage front's base URL (another port: another origin than `url`). */
  readonly storageUrl: string;
  /** Every request the storage front received so far, oldest first (the last 10 000). */
  storageReceived(): readonly StorageRequest[];
  /** Sets the fault new requests meet (and, when slow, bytes in flight); undefined heals. */
  set(fault: RegistryFault | undefined): void;
  /** Sets `fault` for `ms`, then heals; resolves once healed (early when `signal` aborts). */
  during(fault: RegistryFault, ms: number, signal?: AbortSignal): Promise<void>;
  counts(): FaultProxyCounts;
  /** Every request received so far, oldest first (the last 10 000). */
  received(): readonly ProxiedRequest[];
  stop(): Promise<void>;
}

export interface FaultProxyOptions {
  /** The registry's base URL, e.g. `http://127.0.0.1:5000`. */
  readonly upstream: string;
  /** Address to listen on (default 127.0.0.1). */
  readonly host?: string;
  /** Port to listen on (default: a free one). */
  readonly port?: number;
  /** Longest an upstream connection may stay silent, in ms (default 30 000). */
  readonly idleTimeoutMs?: number;
  /**
   * Serves the registry under this path (e.g. `/api/docker/remote`), as registries behind a
   * repository manager are: a request outside it is answered 404, the prefix is taken off
   * before forwarding.
   */
  readonly pathPrefix?: string;
}

/** Requests `received` remembers, so a long test's proxy stays bounded. */
const MAX_RECEIVED = 10_000;

/** How often held bytes and requests look whether a silent fault was healed, in ms. */
const SILENT_POLL_MS = 20;
/** Slowed bodies are passed on in slices of at most this many bytes, so the rate stays smooth. */
const SLICE_BYTES = 16 * 1024;

/** The OCI error code a registry sends with `status`. */
function errorCode(status: number): string {
  return status === 429
    ? 'TOOMANYREQUESTS'
    : status === 503
      ? 'UNAVAILABLE'
      : status === 403
        ? 'DENIED'
        : status === 401
          ? 'UNAUTHORIZED'
          : 'UNKNOWN';
}

export async function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  const upstream = new URL(options.upstream);
  const idleTimeoutMs = options.idleTimeoutMs ?? 30_000;
  const agent = new Agent({ keepAlive: true });
  let fault: RegistryFault | undefined;
  let statusTurn = 0;
  /** A damage fault has cut or stalled a body since it was set (for its `resumeStatus`). */
  let damagedBody = false;
  /** Counts `set` calls: a body damaged under an earlier fault does not arm a later one. */
  let generation = 0;
  /** The Authorization headers an `expire-tokens` fault expired when it was set. */
  let expired = new Set<string>();
  // The shared link of a slow fault: when its next byte may leave, in ms (performance.now()).
  let linkFreeAt = 0;
  const counts = { forwarded: 0, refused: 0, slowed: 0, bytes: 0, damaged: 0, redirected: 0 };

  /** Waits for the slow link to carry `bytes`; at once when no slow fault is set. */
  const linkDelay = (bytes: number): number => {
    if (fault?.kind !== 'slow' || fault.rateBytes === Infinity) {
      return 0;
    }
    const now = performance.now();
    const start = Math.max(now, linkFreeAt);
    linkFreeAt = start + (bytes / fault.rateBytes) * 1000;
    return linkFreeAt - now;
  };

  /** Whether a silent fault is set that a request with this method meets. */
  const silences = (method: string | undefined): boolean =>
    fault?.kind === 'silent' &&
    (fault.methods === undefined || fault.methods.includes(method ?? ''));

  /** Resolves once no silent fault this method meets is set (at once when none is). */
  const whileSilent = async (method: string | undefined): Promise<void> => {
    while (silences(method)) {
      await new Promise((resolve) => setTimeout(resolve, SILENT_POLL_MS));
    }
  };

  /**
   * Passes a body (of a request with this method) on, slice by slice at the slow link's pace
   * while a slow fault is set.
   */
  const throttle = (method: string | undefined): Transform =>
    new Transform({
      transform(chunk: Buffer, _encoding, done: TransformCallback): void {
        const push = async (): Promise<void> => {
          for (let at = 0; at < chunk.length; at += SLICE_BYTES) {
            await whileSilent(method);
            const slice = chunk.subarray(at, at + SLICE_BYTES);
            const wait = linkDelay(slice.length);
            if (wait > 0) {
              await new Promise((resolve) => setTimeout(resolve, wait));
            }
            counts.bytes += slice.length;
            this.push(slice);
          }
        };
        push().then(() => done(), done);
      },
    });

  /** Passes a request body on at the slow link's pace while a slow fault with `uploads` is set. */
  const throttleUpload = (): Transform =>
    new Transform({
      transform(chunk: Buffer, _encoding, done: TransformCallback): void {
        const push = async (): Promise<void> => {
          for (let at = 0; at < chunk.length; at += SLICE_BYTES) {
            const slice = chunk.subarray(at, at + SLICE_BYTES);
            const wait =
              fault?.kind === 'slow' && fault.uploads === true ? linkDelay(slice.length) : 0;
            if (wait > 0) {
              await new Promise((resolve) => setTimeout(resolve, wait));
            }
            this.push(slice);
          }
        };
        push().then(() => done(), done);
      },
    });

  const refuse = (
    res: ServerResponse,
    statuses: readonly number[],
    retryAfterS: number | null,
  ): void => {
    const status = statuses[statusTurn++ % statuses.length] ?? 503;
    counts.refused += 1;
    const body = JSON.stringify({
      errors: [{ code: errorCode(status), message: `fault proxy: answering ${status}` }],
    });
    res.writeHead(status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
      ...(status === 429 && retryAfterS !== null ? { 'retry-after': String(retryAfterS) } : {}),
      ...(status === 401 ? { 'www-authenticate': 'Basic realm="fault-proxy"' } : {}),
    });
    res.end(body);
  };

  /**
   * Damages a blob body at `atByte` of it: cuts the response there (`cut`), flips that byte's
   * bits (`flip`), or sends nothing from there on and keeps the connection open (`stall`).
   */
  const damage = (
    res: ServerResponse,
    how: 'cut' | 'flip' | 'stall',
    atByte: number,
  ): Transform => {
    let seen = 0;
    let cut = false;
    const setUnder = generation;
    counts.damaged += 1;
    return new Transform({
      transform(chunk: Buffer, _encoding, done: TransformCallback): void {
        if (cut) {
          // Nothing passes the cut while the connection goes down.
          done();
          return;
        }
        const start = seen;
        seen += chunk.length;
        if (atByte < start || atByte >= seen) {
          done(null, chunk);
          return;
        }
        if (how === 'flip') {
          const copy = Buffer.from(chunk);
          copy[atByte - start] = (copy[atByte - start] ?? 0) ^ 0xff;
          done(null, copy);
          return;
        }
        cut = true;
        damagedBody ||= setUnder === generation;
        this.push(chunk.subarray(0, atByte - start));
        if (how === 'cut') {
          // Let the bytes before the cut leave, then drop the connection mid-body.
          setImmediate(() => res.destroy());
        }
        done();
      },
      flush(done: TransformCallback): void {
        // A cut or stalled body never ends: the response stays short of its length until it
        // is dropped.
        if (!cut) {
          done();
        }
      },
    });
  };

  const forward = (req: IncomingMessage, res: ServerResponse, current?: RegistryFault): void => {
    counts.forwarded += 1;
    const headers: OutgoingHttpHeaders = { ...req.headers, host: upstream.host };
    if (
      current?.kind === 'expire-tokens' &&
      req.headers.authorization !== undefined &&
      (current.every === true || expired.has(req.headers.authorization))
    ) {
      delete headers.authorization;
    }
    const abort = new AbortController();
    // A client that goes away ends the upstream request too.
    res.once('close', () => {
      if (!res.writableFinished) {
        abort.abort();
      }
    });
    const outgoing = httpRequest(
      new URL(req.url ?? '/', upstream),
      { method: req.method, headers, agent, signal: abort.signal, timeout: idleTimeoutMs },
      (answer) => {
        const status = answer.statusCode ?? 502;
        if (
          current?.kind === 'redirect' &&
          req.method === 'GET' &&
          (status === 200 || status === 206) &&
          (req.url ?? '').includes('/blobs/')
        ) {
          // The registry has authorized the request: send the client to the storage instead.
          answer.destroy();
          counts.redirected += 1;
          const location = signedUrl(req, current.expired ?? 0);
          res.writeHead(current.status ?? 307, { location, 'content-length': 0 });
          res.end();
          return;
        }
        const dropped =
          current?.kind === 'drop-headers' && (req.url ?? '').includes('/manifests/')
            ? new Set(current.names)
            : undefined;
        const headers = Object.fromEntries(
          Object.entries(answer.headers).filter(([name]) => dropped?.has(name) !== true),
        );
        res.writeHead(status, headers);
        if (
          current?.kind === 'damage' &&
          req.method === 'GET' &&
          (status === 200 || status === 206) &&
          (req.url ?? '').includes('/blobs/')
        ) {
          pipeline(
            answer,
            damage(res, current.how, current.atByte),
            throttle(req.method),
            res,
            () => undefined,
          );
          return;
        }
        pipeline(answer, throttle(req.method), res, () => undefined);
      },
    );
    outgoing.on('timeout', () => outgoing.destroy(new Error('registry idle timeout')));
    outgoing.on('error', () => {
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end('fault proxy: registry unreachable\n');
      } else {
        res.destroy();
      }
    });
    pipeline(req, throttleUpload(), outgoing, () => undefined);
  };

  /** Signatures handed out by a redirect fault: the path and credentials each stands for. */
  const signatures = new Map<
    string,
    {
      readonly path: string;
      readonly authorization: string | undefined;
      readonly expired: boolean;
      /** The signed path and query, byte for byte: S3 refuses a URL re-encoded on the way. */
      readonly target: string;
    }
  >();
  let signedCount = 0;
  /** Whether the storage front has cut an answer (`cutAtByte`) since the fault was set. */
  let storageCut = false;
  let storageUrl = '';
  const signedUrl = (req: IncomingMessage, expiredFirst: number): string => {
    signedCount += 1;
    const signature = randomBytes(16).toString('hex');
    // As S3 writes them: percent-encoded slashes, pluses and equals signs in the credential
    // and the session token, which a client must send back exactly as given.
    const target =
      `/storage/${signature.slice(0, 8)}/data` +
      `?X-Amz-Algorithm=AWS4-HMAC-SHA256` +
      `&X-Amz-Credential=ASIAEXAMPLE%2F20261130%2Fus-east-1%2Fs3%2Faws4_request` +
      `&X-Amz-Date=20261130T210000Z&X-Amz-Expires=1200` +
      `&X-Amz-Security-Token=IQoJb3JpZ2luX2Vj%2B%2Fa%3D%3D` +
      `&response-content-disposition=attachment%3B%20filename%3D%22blob%22` +
      `&X-Amz-SignedHeaders=host&X-Amz-Signature=${signature}`;
    signatures.set(signature, {
      path: req.url ?? '/',
      authorization: req.headers.authorization,
      expired: signedCount <= expiredFirst,
      target,
    });
    return new URL(target, storageUrl).toString();
  };
  const storageReceived: StorageRequest[] = [];
  const storageAnswer = (res: ServerResponse, status: number, code: string): void => {
    const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code></Error>`;
    res.writeHead(status, { 'content-type': 'application/xml', 'content-length': body.length });
    res.end(body);
  };
  const storage = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://storage');
    const signed = signatures.get(url.searchParams.get('X-Amz-Signature') ?? '');
    const status =
      req.headers.authorization !== undefined
        ? 400
        : signed === undefined ||
            signed.expired ||
            req.method !== 'GET' ||
            req.url !== signed.target
          ? 403
          : 200;
    storageReceived.push({
      method: req.method ?? '',
      url: req.url ?? '',
      authorization: req.headers.authorization,
      range: req.headers.range,
      status,
      signedFor: signed?.path,
    });
    if (storageReceived.length > MAX_RECEIVED) {
      storageReceived.shift();
    }
    req.resume();
    if (status === 400) {
      // S3: "Only one auth mechanism allowed".
      storageAnswer(res, 400, 'InvalidArgument');
      return;
    }
    if (signed === undefined || status === 403) {
      storageAnswer(res, 403, signed?.expired === true ? 'AccessDenied' : 'SignatureDoesNotMatch');
      return;
    }
    const headers: OutgoingHttpHeaders = {
      host: upstream.host,
      ...(signed.authorization === undefined ? {} : { authorization: signed.authorization }),
      ...(req.headers.range === undefined ? {} : { range: req.headers.range }),
    };
    const outgoing = httpRequest(
      new URL(signed.path, upstream),
      { method: 'GET', headers, agent, timeout: idleTimeoutMs },
      (answer) => {
        const kept: OutgoingHttpHeaders = {};
        for (const name of ['content-length', 'content-range', 'content-type', 'accept-ranges']) {
          if (answer.headers[name] !== undefined) {
            kept[name] = answer.headers[name];
          }
        }
        const status = answer.statusCode ?? 502;
        res.writeHead(status, kept);
        const cutAt = fault?.kind === 'redirect' ? fault.cutAtByte : undefined;
        if (cutAt !== undefined && !storageCut && (status === 200 || status === 206)) {
          storageCut = true;
          pipeline(answer, damage(res, 'cut', cutAt), res, () => undefined);
          return;
        }
        pipeline(answer, throttle(req.method), res, () => undefined);
      },
    );
    outgoing.on('timeout', () => outgoing.destroy(new Error('registry idle timeout')));
    outgoing.on('error', () => res.destroy());
    res.once('close', () => outgoing.destroy());
    outgoing.end();
  });

  const received: ProxiedRequest[] = [];
  const server = createServer((req, res) => {
    const prefix = options.pathPrefix;
    if (prefix !== undefined) {
      if (!(req.url ?? '').startsWith(`${prefix}/`)) {
        req.resume();
        res.writeHead(404, { 'content-type': 'text/plain', 'content-length': 10 });
        res.end('not found\n');
        return;
      }
      req.url = (req.url ?? '').slice(prefix.length);
    }
    received.push({
      method: req.method ?? '',
      url: req.url ?? '',
      authorization: req.headers.authorization,
      range: req.headers.range,
    });
    if (received.length > MAX_RECEIVED) {
      received.shift();
    }
    const current = fault;
    if (
      current?.kind === 'status' &&
      (current.methods === undefined || current.methods.includes(req.method ?? '')) &&
      (current.paths === undefined || current.paths.test(req.url ?? '')) &&
      (current.times === undefined || statusTurn < current.times)
    ) {
      // The request body is not wanted; drain it so the connection stays usable.
      req.resume();
      refuse(res, current.statuses, current.retryAfterS === undefined ? 1 : current.retryAfterS);
      return;
    }
    if (
      current?.kind === 'damage' &&
      current.resumeStatus !== undefined &&
      damagedBody &&
      req.method === 'GET' &&
      req.headers.range !== undefined
    ) {
      req.resume();
      const status = current.resumeStatus;
      const timer = setTimeout(() => refuse(res, [status], null), current.resumeDelayMs ?? 0);
      res.once('close', () => clearTimeout(timer));
      return;
    }
    if (current?.kind === 'down') {
      counts.refused += 1;
      req.socket.destroy();
      return;
    }
    if (silences(req.method)) {
      let gone = false;
      res.once('close', () => {
        gone = true;
      });
      void whileSilent(req.method).then(() => {
        // A client gone meanwhile is never forwarded.
        if (!gone) {
          forward(req, res, fault);
        }
      });
      return;
    }
    const delayMs =
      current?.kind === 'slow' &&
      (current.methods === undefined || current.methods.includes(req.method ?? ''))
        ? current.delayMs
        : current?.kind === 'damage' && req.method === 'GET' && req.headers.range !== undefined
          ? current.resumeDelayMs
          : undefined;
    if (delayMs !== undefined) {
      counts.slowed += 1;
      const timer = setTimeout(() => forward(req, res), delayMs);
      // A client gone before the delay is over is never forwarded.
      res.once('close', () => clearTimeout(timer));
      return;
    }
    forward(req, res, current);
  });
  server.listen(options.port ?? 0, options.host ?? '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  storage.listen(0, options.host ?? '127.0.0.1');
  await once(storage, 'listening');
  storageUrl = `http://${urlHost(options.host ?? '127.0.0.1')}:${(storage.address() as AddressInfo).port}`;

  const set = (next: RegistryFault | undefined): void => {
    fault = next;
    statusTurn = 0;
    damagedBody = false;
    generation += 1;
    expired = new Set(
      next?.kind === 'expire-tokens'
        ? received.flatMap((r) => (r.authorization?.startsWith('Bearer ') ? [r.authorization] : []))
        : [],
    );
    signedCount = 0;
    storageCut = false;
    linkFreeAt = 0;
  };
  return {
    url: `http://${urlHost(options.host ?? '127.0.0.1')}:${port}`,
    storageUrl,
    storageReceived: () => [...storageReceived],
    set,
    during: async (next, ms, signal) => {
      set(next);
      try {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, ms);
          signal?.addEventListener(
            'abort',
            () => {
              clearTimeout(timer);
              resolve();
            },
            { once: true },
          );
        });
      } finally {
        set(undefined);
      }
    },
    counts: () => ({ ...counts }),
    received: () => [...received],
    stop: async () => {
      const closed = Promise.all([
        new Promise<void>((resolve) => server.close(() => resolve())),
        new Promise<void>((resolve) => storage.close(() => resolve())),
      ]);
      server.closeAllConnections();
      storage.closeAllConnections();
      agent.destroy();
      await closed;
    },
  };
}
