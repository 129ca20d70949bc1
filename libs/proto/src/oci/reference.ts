/**
 * Full image references (`registry.example.com:5000/team/app:v1@sha256:...`), following the
 * reference grammar shared by the distribution project and container clients:
 *
 *   reference   := name [ ":" tag ] [ "@" digest ]
 *   name        := [ domain "/" ] remote-name
 *   domain      := host [ ":" port ]
 *
 * A first path component counts as a registry host when it contains `.` or `:` or is
 * `localhost`; otherwise the registry is `docker.io` and one-component names gain `library/`,
 * as docker and containerd normalise them.
 */
import { parseDigest, type Digest } from './digest.js';
import { clip, OciParseError } from './errors.js';
import { parseRepositoryName, parseTag } from './name.js';

/** The registry host that unqualified references name. */
export const DEFAULT_REGISTRY = 'docker.io';

/** A parsed image reference. At least one of `tag` and `digest` is set. */
export interface ImageReference {
  /** Registry host, with port when one was given, e.g. `ghcr.io` or `127.0.0.1:5000`. */
  readonly registry: string;
  /** Repository name inside the registry, e.g. `library/alpine`. */
  readonly repository: string;
  readonly tag?: string;
  readonly digest?: Digest;
}

const HOST_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const HOST = new RegExp(
  `^(?:${HOST_COMPONENT}(?:\\.${HOST_COMPONENT})*|\\[[a-fA-F0-9:]+\\])(?::[0-9]+)?$`,
);

/** Validates a registry host (`name[:port]`, `ipv4[:port]` or `[ipv6][:port]`). */
export function parseRegistryHost(input: string): string {
  if (!HOST.test(input)) {
    throw new OciParseError('REFERENCE_INVALID', `"${clip(input)}" is not a registry host`);
  }
  return input;
}

function looksLikeRegistry(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost';
}

/** Parses a full image reference; a reference without tag or digest gets the tag `latest`. */
export function parseImageReference(input: string): ImageReference {
  let rest = input;
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at !== -1) {
    digest = parseDigest(rest.slice(at + 1));
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const lastColon = rest.lastIndexOf(':');
  if (lastColon > rest.lastIndexOf('/')) {
    tag = parseTag(rest.slice(lastColon + 1));
    rest = rest.slice(0, lastColon);
  }
  const slash = rest.indexOf('/');
  let registry = DEFAULT_REGISTRY;
  let repository = rest;
  if (slash !== -1 && looksLikeRegistry(rest.slice(0, slash))) {
    registry = parseRegistryHost(rest.slice(0, slash));
    repository = rest.slice(slash + 1);
  } else if (slash === -1) {
    repository = `library/${rest}`;
  }
  parseRepositoryName(repository);
  if (tag === undefined && digest === undefined) {
    tag = 'latest';
  }
  return {
    registry,
    repository,
    ...(tag === undefined ? {} : { tag }),
    ...(digest === undefined ? {} : { digest }),
  };
}

/** Formats a reference back into its canonical text form. */
export function formatImageReference(ref: ImageReference): string {
  const tag = ref.tag === undefined ? '' : `:${ref.tag}`;
  const digest = ref.digest === undefined ? '' : `@${ref.digest.toString()}`;
  return `${ref.registry}/${ref.repository}${tag}${digest}`;
}
