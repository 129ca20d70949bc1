/** The demo's command line: every problem is reported at once, with the usage. */
import { parseArgs } from 'node:util';

const MiB = 1024 * 1024;

export const USAGE = `usage: bash scripts/demo.sh [--agents N] [--layers MiB,MiB,...] [--keep]
                           [--registry URL --image REPO:TAG [--docker-config PATH]]

  --agents N            agents in the swarm, one containerd each (default 3)
  --layers LIST         layer sizes of the generated sample image, in MiB (default 64,16,1)
  --keep                leave everything running until Ctrl-C and print how to pull through it
  --registry URL        your registry instead of a local one, e.g. http://127.0.0.1:5000 or
                        https://registry.example.com (Docker Hub: https://registry-1.docker.io)
  --image REPO:TAG      the image in that registry to pull through the agents (or REPO@DIGEST)
  --docker-config PATH  docker config JSON with credentials for a private registry: given to the
                        seed server (SHOAL_SEED_DOCKER_CONFIG) and to containerd (ctr --user)
  --timeout-s S         longest a pull may take (default 600)
`;

/** The registry and image to pull, when they are the user's own. */
export interface OwnImage {
  /** The registry's name in image references and `ns=`, e.g. `registry.example.com:5000`. */
  readonly host: string;
  /** Where it is reached, e.g. `https://registry.example.com:5000`. */
  readonly url: string;
  /** Repository, as the registry knows it (`library/alpine` on Docker Hub). */
  readonly repository: string;
  /** `:tag` or `@sha256:...`. */
  readonly reference: string;
  readonly dockerConfig: string | undefined;
}

export interface DemoOptions {
  readonly agents: number;
  /** Layer sizes of the generated image, in bytes (unused with `own`). */
  readonly layerSizes: readonly number[];
  readonly keep: boolean;
  readonly own: OwnImage | undefined;
  readonly timeoutMs: number;
}

/** Docker Hub's registry answers at registry-1.docker.io, but images are named `docker.io/...`. */
const DOCKER_HUB_HOSTS = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

const REPOSITORY =
  /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

function ownImage(
  registry: string,
  image: string,
  dockerConfig: string | undefined,
  problems: string[],
): OwnImage | undefined {
  let url: URL;
  try {
    url = new URL(registry);
  } catch {
    problems.push(`--registry: "${registry}" is not a URL (e.g. https://registry.example.com)`);
    return undefined;
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.pathname !== '/') {
    problems.push('--registry takes http(s)://host[:port], without a path');
    return undefined;
  }
  const hub = DOCKER_HUB_HOSTS.has(url.hostname);
  const at = image.indexOf('@');
  const colon = image.lastIndexOf(':');
  let repository: string;
  let reference: string;
  if (at !== -1) {
    repository = image.slice(0, at);
    reference = image.slice(at);
    if (!DIGEST.test(reference.slice(1))) {
      problems.push('--image: the digest must be sha256:<64 hex digits>');
    }
  } else if (colon > image.lastIndexOf('/')) {
    repository = image.slice(0, colon);
    reference = image.slice(colon);
    if (!TAG.test(reference.slice(1))) {
      problems.push(`--image: "${reference.slice(1)}" is not a valid tag`);
    }
  } else {
    repository = image;
    reference = ':latest';
  }
  if (!REPOSITORY.test(repository)) {
    problems.push(`--image: "${repository}" is not a repository name (lower case, a/b/c)`);
  }
  return {
    host: hub ? 'docker.io' : url.host,
    url: hub ? 'https://registry-1.docker.io' : url.origin,
    repository: hub && !repository.includes('/') ? `library/${repository}` : repository,
    reference,
    dockerConfig,
  };
}

/** Parses the command line; prints the problems and the usage and exits 2 when it is wrong. */
export function parseDemoOptions(argv: readonly string[]): DemoOptions {
  const fail = (problems: readonly string[]): never => {
    process.stderr.write(`${problems.join('\n')}\n\n${USAGE}`);
    process.exit(2);
  };
  const parsed = (() => {
    try {
      return parseArgs({
        args: [...argv],
        options: {
          agents: { type: 'string', default: '3' },
          layers: { type: 'string' },
          keep: { type: 'boolean', default: false },
          registry: { type: 'string' },
          image: { type: 'string' },
          'docker-config': { type: 'string' },
          'timeout-s': { type: 'string', default: '600' },
          help: { type: 'boolean', default: false },
        },
      });
    } catch (error) {
      return fail([(error as Error).message]);
    }
  })();
  const values = parsed.values;
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const problems: string[] = [];
  const agents = Number(values.agents);
  if (!Number.isInteger(agents) || agents < 1 || agents > 32) {
    problems.push('--agents takes a whole number from 1 to 32');
  }
  const layerSizes = (values.layers ?? '64,16,1')
    .split(',')
    .map((s) => Math.round(Number(s) * MiB));
  if (layerSizes.some((s) => !Number.isFinite(s) || s <= 0)) {
    problems.push('--layers takes sizes in MiB, e.g. 64,16,1');
  }
  const timeoutS = Number(values['timeout-s']);
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) {
    problems.push('--timeout-s takes a positive number of seconds');
  }
  let own: OwnImage | undefined;
  if (values.registry !== undefined || values.image !== undefined) {
    if (values.registry === undefined || values.image === undefined) {
      problems.push('--registry and --image go together');
    } else {
      own = ownImage(values.registry, values.image, values['docker-config'], problems);
    }
    if (values.layers !== undefined) {
      problems.push('--layers is for the generated image; it does not go with --image');
    }
  } else if (values['docker-config'] !== undefined) {
    problems.push('--docker-config goes with --registry and --image');
  }
  if (problems.length > 0) {
    fail(problems);
  }
  return { agents, layerSizes, keep: values.keep, own, timeoutMs: timeoutS * 1000 };
}
