/**
 * A small HTTP/1.1 client for bulk GETs (pieces between agents, blobs from a registry), with
 * keep-alive connections.
 *
 * Why not node:http: its client reads every socket chunk into a fresh 64 KiB buffer and its
 * parser copies every body chunk into another, so a GiB received is two GiB of short-lived
 * external memory, and V8 answers that pressure with a full collection every few tens of MiB;
 * on the agent's swarm path that was a third of its CPU per byte, on the seed server's ingest
 * about as much. Here each connection reads into one buffer of its own (net's `onread`) and the
 * body is handed to the caller as views of it, to be copied at once where it is kept. These
 * are plain GETs answered with a body of a known length (or chunked), so the protocol needed is
 * small. A sink that knows where the body goes (a piece buffer) can offer that buffer
 * (`bodyBuffer`): the socket then reads the body straight into it, with no copy and in reads as
 * large as the buffer's free room, not the connection's read buffer.
 *
 * `https://` sources are reached over TLS (`tls.connect`, with the same per-connection read
 * buffer): the server's certificate must chain to the configured CA (the system's by default)
 * and name the host dialled, or the configured server name.
 */
import { connect, isIP, type OnReadOpts, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type SecureContext } from 'node:tls';

/** Bytes each connection reads at a time, into a buffer it keeps: the largest body view. */
export const RAW_READ_BYTES = 256 * 1024;
/** Longest response head accepted, in bytes. */
const MAX_HEAD_BYTES = 16 * 1024;
/**
 * Bytes read at a time while a head is awaited: the body bytes that come in the same read as
 * the head are copied (not read into the sink's own buffer, `bodyBuffer`), so that read is
 * kept short.
 */
const HEAD_READ_BYTES = 4 * 1024;
/**
 * How long an idle connection is kept, in ms: below the 5 s keep-alive timeout of Node's HTTP
 * servers, so a connection is rarely reused just as the server closes it.
 */
const IDLE_MS = 4000;
/** Idle connections kept per host. */
const MAX_IDLE_PER_HOST = 16;
/**
 * Longest body of an answer the sink refused at its head (a 404, a 429 and its JSON) that is
 * read and dropped so that the connection carries the next request: a peer or seed server
 * that turns requests away would otherwise cost a new connection (a TLS handshake with piece
 * TLS) each time.
 */
const DRAIN_MAX_BYTES = 64 * 1024;

/** How `https://` sources are reached. */
export interface RawTlsOptions {
  /** CA, and client certificate for mutual TLS; undefined: the system's CAs, no certificate. */
  readonly secureContext: () => SecureContext | undefined;
  /**
   * The name servers' certificates must carry (and the SNI sent), instead of the URL's host:
   * for peers that share one certificate and are dialled by address.
   */
  readonly servername: string | undefined;
}

/** A response's headers, by lowercase name. */
export type ResponseHeaders = Readonly<Record<string, string>>;

/** What the caller does with one response. */
export interface ResponseSink {
  /**
   * The status, the Content-Length when sent, and the headers (names in lowercase; a repeated
   * header keeps its last value). Throwing ends the exchange with that error.
   */
  onHead(status: number, length: number | undefined, headers: ResponseHeaders): void;
  /**
   * Body bytes: a view valid only during the call (copy what you keep). A promise pauses
   * reading until it settles; a rejected one ends the exchange with its error.
   */
  onBody(bytes: Buffer): Promise<void> | void;
  /**
   * Optional, with `onBodyRead`: where the next body bytes may be read from the socket
   * directly (filled from its start; undefined: read into the connection's buffer and hand
   * them to `onBody`). Asked after every read while a body of known length has bytes left, and
   * never given more of them than are left, so nothing but this body lands there.
   */
  bodyBuffer?(): Buffer | undefined;
  /**
   * `count` bytes were read into the start of the buffer `bodyBuffer` last returned. A promise
   * pauses reading until it settles, as for `onBody`.
   */
  onBodyRead?(count: number): Promise<void> | void;
}

export interface GetOptions {
  readonly headers: Readonly<Record<string, string>>;
  readonly signal: AbortSignal;
  /**
   * Longest the connection may stay silent, in ms. There is no limit on the whole exchange: a
   * slow answer that keeps moving is the caller's to judge (see `RateFloor`).
   */
  readonly timeoutMs: number;
  /**
   * Longest the connection may stay silent once the body's first bytes have come, in ms
   * (default `timeoutMs`): a body that stops part-way, its connection left open, is given up
   * sooner than a server slow to start its answer (a head, then a wait on its own upstream).
   */
  readonly bodyTimeoutMs?: number;
  /**
   * Longest a new connection may take to connect, in ms; without it only `timeoutMs` bounds
   * the connect.
   */
  readonly connectTimeoutMs?: number;
  /** The error for a timeout. */
  readonly timeoutError: (kind: 'idle' | 'connect') => Error;
}

/**
 * How many looks the idle watchdog takes per idle timeout (the shorter of `timeoutMs` and
 * `bodyTimeoutMs`): a silence is noticed between the timeout and `× (1 + 1/IDLE_LOOKS)` of it
 * after the last read.
 */
const IDLE_LOOKS = 4;

/** One keep-alive connection; the onread callback goes to whichever exchange uses it. */
class Connection {
  readonly socket: Socket;
  /**
   * Reads go here while an exchange runs, as the connection's read buffer and the bytes read
   * into it; false pauses the socket.
   */
  receive: ((buffer: Buffer, length: number) => boolean) | undefined;
  /** Where the exchange wants the next read to go instead of the read buffer, if anywhere. */
  target: (() => Buffer | undefined) | undefined;
  /** The connection's own read buffer: response heads, and bodies read without a target. */
  readonly readBuffer = Buffer.allocUnsafe(RAW_READ_BYTES);
  /** Its start, where heads are read (`HEAD_READ_BYTES`). */
  readonly headBuffer = this.readBuffer.subarray(0, HEAD_READ_BYTES);
  /** Set when the connection was used before: a failure before any answer may be a stale one. */
  reused = false;
  idleTimer: NodeJS.Timeout | undefined;
  /** Drops the connection from the idle list (its close/error listener while idle). */
  forget: (() => void) | undefined;

  constructor(url: URL, tls: RawTlsOptions | undefined) {
    const host = url.hostname.replace(/^\[|\]$/g, '');
    // Every read lands in the read buffer (a head in its start, `headBuffer`), or in the buffer
    // the exchange's sink offered for its body (net asks for the next read's buffer after each
    // read, and passes it back to the callback): no view is made per read here, only the body
    // views the parser hands out.
    const onread: OnReadOpts = {
      // Between exchanges the next read starts a head (the buffer is chosen before the read).
      buffer: () =>
        this.receive === undefined ? this.headBuffer : (this.target?.() ?? this.readBuffer),
      callback: (bytes: number, buffer: Uint8Array): boolean => {
        if (this.receive === undefined) {
          // Nothing was asked: a server that talks out of turn loses the connection.
          this.socket.destroy();
          return false;
        }
        return this.receive(buffer as Buffer, bytes);
      },
    };
    if (url.protocol === 'https:') {
      const secureContext = tls?.secureContext();
      // SNI carries names only; an address is checked against the certificate's IP names.
      const servername = tls?.servername ?? (isIP(host) === 0 ? host : undefined);
      // tls.connect takes net's `onread` (documented since Node 14), which its types omit.
      const options: ConnectionOptions & { onread: OnReadOpts } = {
        host,
        port: Number(url.port || '443'),
        ...(servername === undefined ? {} : { servername }),
        ...(secureContext === undefined ? {} : { secureContext }),
        ALPNProtocols: ['http/1.1'],
        onread,
      };
      this.socket = tlsConnect(options);
      this.socket.setNoDelay(true);
    } else {
      this.socket = connect({ host, port: Number(url.port || '80'), noDelay: true, onread });
    }
    // Errors reach the exchange or the idle pool through their own listeners; this one only
    // keeps an error between the two (an exchange just ended) from crashing the process.
    this.socket.on('error', () => undefined);
  }
}

export class RawHttpClient {
  readonly #idle = new Map<string, Connection[]>();
  readonly #tls: RawTlsOptions | undefined;
  #closed = false;

  /** `tls`: how `https://` sources are reached (default: the system's CAs, no certificate). */
  constructor(tls?: RawTlsOptions) {
    this.#tls = tls;
  }

  /**
   * GETs `url` and hands the response to `sink`. Resolves once the whole body has been given
   * to the sink and every promise it returned has settled; rejects on a connection error, a
   * timeout, an abort, or an error from the sink. A connection used before that fails before
   * any answer is retried once on a new one (the server may have closed it while idle).
   */
  async get(url: URL, options: GetOptions, sink: ResponseSink): Promise<void> {
    // Scheme in the key: a plain and a TLS connection to one address are not interchangeable.
    const key = `${url.protocol}//${url.host}`;
    let connection = this.#take(key, url);
    for (;;) {
      const reused = connection.reused;
      try {
        await this.#exchange(key, connection, url, options, sink);
        return;
      } catch (error) {
        if (!(error instanceof StaleConnectionError) || !reused || options.signal.aborted) {
          throw error instanceof StaleConnectionError ? error.cause : error;
        }
      }
      connection = this.#take(key, url, true);
    }
  }

  /** Closes every idle connection; connections in use close when their exchange ends. */
  close(): void {
    this.#closed = true;
    for (const list of this.#idle.values()) {
      for (const connection of list) {
        clearTimeout(connection.idleTimer);
        connection.socket.destroy();
      }
    }
    this.#idle.clear();
  }

  /**
   * Closes the idle connections to `url`'s server: one that vanished (packets dropped, no RST)
   * would take a request on such a connection and never answer it.
   */
  dropIdle(url: URL): void {
    const key = `${url.protocol}//${url.host}`;
    for (const connection of this.#idle.get(key) ?? []) {
      clearTimeout(connection.idleTimer);
      connection.socket.destroy();
    }
    this.#idle.delete(key);
  }

  #take(key: string, url: URL, fresh = false): Connection {
    const list = this.#idle.get(key);
    const idle = fresh ? undefined : list?.pop();
    if (idle !== undefined) {
      clearTimeout(idle.idleTimer);
      if (idle.forget !== undefined) {
        idle.socket.off('close', idle.forget);
        idle.socket.off('error', idle.forget);
        idle.forget = undefined;
      }
      return idle;
    }
    return new Connection(url, this.#tls);
  }

  #release(key: string, connection: Connection): void {
    const list = this.#idle.get(key) ?? [];
    if (this.#closed || list.length >= MAX_IDLE_PER_HOST || connection.socket.destroyed) {
      connection.socket.destroy();
      return;
    }
    connection.reused = true;
    connection.receive = undefined;
    const forget = (): void => {
      clearTimeout(connection.idleTimer);
      const at = list.indexOf(connection);
      if (at >= 0) {
        list.splice(at, 1);
      }
      connection.socket.destroy();
    };
    connection.forget = forget;
    connection.socket.once('close', forget);
    connection.socket.once('error', forget);
    connection.idleTimer = setTimeout(forget, IDLE_MS);
    connection.idleTimer.unref();
    list.push(connection);
    this.#idle.set(key, list);
  }

  #exchange(
    key: string,
    connection: Connection,
    url: URL,
    options: GetOptions,
    sink: ResponseSink,
  ): Promise<void> {
    const { socket } = connection;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      let answered = false;
      /** What the sink threw at a head whose short body is being read to keep the connection. */
      let refused: Error | undefined;
      let pending: Promise<void> | undefined;
      const parser = new ResponseParser();
      let connectTimer: NodeJS.Timeout | undefined;
      let idleTimer: NodeJS.Timeout | undefined;
      /** The body's first bytes have come: from here on silences are the body's. */
      let bodySeen = false;
      /** Socket reads during this exchange, for the idle watchdog. */
      let reads = 0;
      const cleanup = (): void => {
        clearTimeout(connectTimer);
        clearTimeout(idleTimer);
        idleTimer = undefined;
        socket.off('error', onError);
        socket.off('close', onClose);
        socket.off('end', onEnd);
        options.signal.removeEventListener('abort', onAbort);
        connection.receive = undefined;
        connection.target = undefined;
      };
      const fail = (error: Error): void => {
        if (settled) {
          return;
        }
        settled = true;
        cleanup();
        socket.destroy();
        // Settle after the sink's last write, so nothing more is written once the caller knows.
        void (pending ?? Promise.resolve())
          .catch(() => undefined)
          .then(() =>
            // An abort or a timeout while a refused body drained is what ended the exchange.
            reject(
              refused !== undefined && !options.signal.aborted
                ? refused
                : answered
                  ? error
                  : new StaleConnectionError(error),
            ),
          );
      };
      const finish = (reusable: boolean): void => {
        if (settled) {
          return;
        }
        settled = true;
        cleanup();
        void (pending ?? Promise.resolve()).then(
          () => {
            if (reusable) {
              this.#release(key, connection);
            } else {
              socket.destroy();
            }
            if (refused === undefined) {
              resolve();
            } else {
              reject(refused);
            }
          },
          (error: unknown) => {
            socket.destroy();
            reject(error instanceof Error ? error : new Error(String(error)));
          },
        );
      };
      const onIdle = (): void => fail(options.timeoutError('idle'));
      const onError = (error: Error): void => fail(error);
      const onClose = (): void => fail(new Error(`connection to ${key} closed early`));
      const onEnd = (): void => {
        if (parser.untilClose) {
          finish(false);
        } else {
          fail(new Error(`connection to ${key} ended early`));
        }
      };
      const onAbort = (): void =>
        fail(
          options.signal.reason instanceof Error
            ? options.signal.reason
            : new Error(`request to ${key} aborted`),
        );
      if (options.signal.aborted) {
        onAbort();
        return;
      }
      options.signal.addEventListener('abort', onAbort, { once: true });
      if (options.connectTimeoutMs !== undefined && socket.connecting) {
        connectTimer = setTimeout(
          () => fail(options.timeoutError('connect')),
          options.connectTimeoutMs,
        );
        socket.once('connect', () => clearTimeout(connectTimer));
      }
      // The idle timeout, watched by a timer that looks a few times per timeout whether
      // anything was read since it last looked, rather than by the socket's own timeout:
      // Node moves that timer on every read, a timer-list insertion per socket chunk, which
      // at a low rate (small chunks) was the largest part of the reading's cost.
      // Time the sink holds reading paused (a promise of its pending) is not the server's
      // silence.
      let readsSeen = 0;
      let quietMs = 0;
      const bodyTimeoutMs = options.bodyTimeoutMs ?? options.timeoutMs;
      const lookMs = Math.max(
        1,
        Math.ceil(Math.min(options.timeoutMs, bodyTimeoutMs) / IDLE_LOOKS),
      );
      const look = (): void => {
        if (reads !== readsSeen || pending !== undefined) {
          readsSeen = reads;
          quietMs = 0;
        } else {
          quietMs += lookMs;
          if (quietMs >= (bodySeen ? bodyTimeoutMs : options.timeoutMs)) {
            onIdle();
            return;
          }
        }
        idleTimer = setTimeout(look, lookMs);
      };
      idleTimer = setTimeout(look, lookMs);
      // A connection the sink paused, earlier, reads again.
      socket.resume();
      socket.on('error', onError);
      socket.on('close', onClose);
      socket.on('end', onEnd);

      /** Keeps reading paused while a promise from the sink is pending. */
      const track = (result: Promise<void> | void): void => {
        if (result === undefined) {
          return;
        }
        const previous = pending ?? Promise.resolve();
        const current: Promise<void> = Promise.all([previous, result]).then(() => {
          if (pending === current) {
            pending = undefined;
            if (!settled) {
              socket.resume();
            }
          }
        });
        pending = current;
        current.catch((error: unknown) =>
          fail(error instanceof Error ? error : new Error(String(error))),
        );
      };
      /** Hands body bytes over; a promise from the sink pauses the socket until it settles. */
      const deliver = (bytes: Buffer): void => {
        bodySeen ||= bytes.length > 0;
        if (refused === undefined) {
          track(sink.onBody(bytes));
        }
      };
      const direct = sink.bodyBuffer !== undefined && sink.onBodyRead !== undefined;
      // The head is read in short reads, so that few of the body's bytes come with it (those
      // are copied). Then the next read goes into the sink's buffer, if it offers one, while the
      // body has bytes left: never more of them than are left, so the read stops at the body's
      // end.
      connection.target = () => {
        if (parser.inHead) {
          return connection.headBuffer;
        }
        const left = parser.bodyLeft;
        if (!direct || left === 0 || refused !== undefined) {
          return undefined;
        }
        const target = sink.bodyBuffer?.();
        return target === undefined || target.length <= left ? target : target.subarray(0, left);
      };
      // A head the sink refuses with a short body of known length, on a connection that
      // stays open: the body is read and dropped, the connection kept, and the exchange
      // rejects with the sink's error once the body is in. Any other refusal (no length, a
      // long body, `connection: close`, an answer that has no body whatever its length says)
      // closes the connection at once.
      const onHead = (
        status: number,
        length: number | undefined,
        headers: ResponseHeaders,
      ): void => {
        try {
          sink.onHead(status, length, headers);
        } catch (error) {
          if (
            length === undefined ||
            length > DRAIN_MAX_BYTES ||
            !parser.keepAlive ||
            status < 200 ||
            status === 204 ||
            status === 304
          ) {
            throw error;
          }
          refused = error instanceof Error ? error : new Error(String(error));
        }
      };
      connection.receive = (buffer, length) => {
        if (settled) {
          return false;
        }
        answered = true;
        reads += 1;
        try {
          let outcome: 'more' | 'done';
          if (buffer === connection.readBuffer || buffer === connection.headBuffer) {
            outcome = parser.feed(buffer, length, onHead, deliver);
          } else {
            // Body bytes read into the sink's buffer (only offered inside a body).
            bodySeen ||= length > 0;
            outcome = parser.skipBody(length);
            track(sink.onBodyRead?.(length));
          }
          if (outcome === 'done') {
            finish(parser.keepAlive);
            // Reading on while idle, so a server that closes the connection is noticed.
            return true;
          }
        } catch (error) {
          fail(error instanceof Error ? error : new Error(String(error)));
          return false;
        }
        // Paused while the sink writes; resumed when it is done.
        return pending === undefined;
      };

      const lines = [`GET ${url.pathname}${url.search} HTTP/1.1`, `host: ${url.host}`];
      for (const [name, value] of Object.entries(options.headers)) {
        lines.push(`${name}: ${value}`);
      }
      socket.write(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
    });
  }
}

/** A connection failed before anything came back; `cause` is why. */
class StaleConnectionError extends Error {
  constructor(cause: Error) {
    super(cause.message, { cause });
    this.cause = cause;
  }
  override readonly cause: Error;
}

/**
 * Parses one HTTP/1.1 response: the head, then a body of Content-Length bytes, chunked, or
 * (without either) until the connection ends.
 */
class ResponseParser {
  #state: 'head' | 'body' | 'size' | 'data' | 'crlf' | 'trailer' | 'done' = 'head';
  #head = '';
  #line = '';
  #remaining = 0;
  #chunked = false;
  /** The body runs until the server closes the connection. */
  untilClose = false;
  /** The connection may carry another request afterwards. */
  keepAlive = true;

  /** True until the whole head has been read. */
  get inHead(): boolean {
    return this.#state === 'head';
  }

  /** Bytes left of a body of known length being read (0 otherwise: a head, chunks, until close). */
  get bodyLeft(): number {
    return this.#state === 'body' && !this.untilClose ? this.#remaining : 0;
  }

  /** Counts `count` bytes of the body (at most `bodyLeft`) read elsewhere; 'done' at its end. */
  skipBody(count: number): 'more' | 'done' {
    if (count > this.bodyLeft) {
      throw new Error('read past the body');
    }
    this.#remaining -= count;
    if (this.#remaining === 0) {
      this.#state = 'done';
      return 'done';
    }
    return 'more';
  }

  /**
   * Feeds the first `end` bytes of `bytes` (a connection's read buffer); 'done' once the
   * response is complete. Body bytes go to `onBody` as views of `bytes`.
   */
  feed(
    bytes: Buffer,
    end: number,
    onHead: (status: number, length: number | undefined, headers: ResponseHeaders) => void,
    onBody: (bytes: Buffer) => void,
  ): 'more' | 'done' {
    let at = 0;
    while (at < end) {
      switch (this.#state) {
        case 'head': {
          const before = this.#head.length;
          this.#head += bytes.toString('latin1', at, Math.min(end, at + MAX_HEAD_BYTES));
          const headEnd = this.#head.indexOf('\r\n\r\n');
          if (headEnd < 0) {
            if (this.#head.length >= MAX_HEAD_BYTES) {
              throw new Error('response head too large');
            }
            at = end;
            break;
          }
          at += headEnd + 4 - before;
          if (this.#startBody(onHead)) {
            // Bytes after a complete response: no pipelining here, so the connection is spent.
            this.keepAlive &&= at === end;
            return 'done';
          }
          break;
        }
        case 'body':
        case 'data': {
          if (this.untilClose) {
            onBody(bytes.subarray(at, end));
            at = end;
            break;
          }
          const take = Math.min(this.#remaining, end - at);
          onBody(bytes.subarray(at, at + take));
          at += take;
          this.#remaining -= take;
          if (this.#remaining === 0) {
            if (this.#state === 'body') {
              this.#state = 'done';
              this.keepAlive &&= at === end;
              return 'done';
            }
            this.#state = 'crlf';
            this.#line = '';
          }
          break;
        }
        case 'size':
        case 'crlf':
        case 'trailer': {
          // Searched within the bytes read only: the rest of the buffer is an older read's.
          const found = bytes.subarray(at, end).indexOf(0x0a);
          const newline = found < 0 ? -1 : at + found;
          const lineEnd = newline < 0 ? end : newline + 1;
          this.#line += bytes.toString('latin1', at, lineEnd);
          at = lineEnd;
          if (this.#line.length > 1024) {
            throw new Error('chunk framing line too long');
          }
          if (newline < 0) {
            break;
          }
          const line = this.#line.replace(/\r?\n$/, '');
          this.#line = '';
          if (this.#state === 'crlf') {
            if (line !== '') {
              throw new Error('bad chunk framing');
            }
            this.#state = 'size';
          } else if (this.#state === 'size') {
            const size = Number.parseInt(line.split(';')[0] ?? '', 16);
            if (!Number.isSafeInteger(size) || size < 0) {
              throw new Error('bad chunk size');
            }
            this.#remaining = size;
            this.#state = size === 0 ? 'trailer' : 'data';
          } else if (line === '') {
            this.#state = 'done';
            this.keepAlive &&= at === end;
            return 'done';
          }
          break;
        }
        case 'done':
          throw new Error('bytes after the response');
      }
    }
    return this.#state === 'done' ? 'done' : 'more';
  }

  /** Reads the head; true when the response has no body (and so is complete). */
  #startBody(
    onHead: (status: number, length: number | undefined, headers: ResponseHeaders) => void,
  ): boolean {
    const [statusLine = '', ...headerLines] = this.#head
      .slice(0, this.#head.indexOf('\r\n\r\n'))
      .split('\r\n');
    const match = /^HTTP\/1\.([01]) (\d{3})/.exec(statusLine);
    if (match === null) {
      throw new Error(`not an HTTP/1.x response: ${statusLine.slice(0, 64)}`);
    }
    const status = Number(match[2]);
    this.keepAlive = match[1] === '1';
    let length: number | undefined;
    // No prototype: a header named like one of Object's properties is just a header.
    const headers = Object.create(null) as Record<string, string>;
    for (const line of headerLines) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers[name] = value;
      if (name === 'content-length') {
        length = Number(value);
        if (!Number.isSafeInteger(length) || length < 0) {
          throw new Error('bad content-length');
        }
      } else if (name === 'transfer-encoding') {
        this.#chunked = value.toLowerCase().split(',').at(-1)?.trim() === 'chunked';
      } else if (name === 'connection') {
        this.keepAlive = value.toLowerCase() !== 'close' && this.keepAlive;
      }
    }
    this.#head = '';
    onHead(status, this.#chunked ? undefined : length, headers);
    if (this.#chunked) {
      this.#state = 'size';
    } else if (length !== undefined) {
      this.#remaining = length;
      this.#state = length === 0 ? 'done' : 'body';
    } else {
      this.untilClose = true;
      this.keepAlive = false;
      this.#state = 'body';
    }
    return length === 0 && !this.#chunked;
  }
}
