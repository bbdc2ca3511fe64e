// Performs the repository's Dockerfile outside Docker (no engine runs in CI)
// and starts the image's command the way a container would:
//
//   - reads Dockerfile and .dockerignore; each stage gets its own root
//     directory in a temporary folder; COPY takes files from the build
//     context (minus .dockerignore) or, with --from, from an earlier stage's
//     root; RUN runs in the stage's WORKDIR with the stage's ENV and a clean
//     environment (npm's own cache stands in for the BuildKit cache mount);
//     `mkdir -p` and `chown` of an absolute path are applied inside the
//     stage's root, which is all the Dockerfile may do outside WORKDIR;
//   - checks that the runtime stage holds no development dependency;
//   - runs the runtime stage's CMD with its ENV, as the USER it names (the
//     host's account of that name, else `nobody`, when this runs as root),
//     with DATA_DIR (the VOLUME) inside that stage's root, NODE_ENV=production
//     and keys made by the image's own sealed-sender-keys tool;
//   - runs the HEALTHCHECK command until it passes, registers an account over
//     HTTP (the embedded database writes into the volume), and stops the relay
//     with SIGTERM as `docker stop` does.
//
//   node tools/container-check/run.mjs   (needs only Node and the npm registry)
//
// CONTAINER_CHECK_KEEP=1 keeps the temporary folder for inspection.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, posix, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const repo = resolve(import.meta.dirname, '../..');
const log = (message) => console.log(`container-check: ${message}`);

/** Dockerfile instructions, with line continuations joined and comments dropped. */
export function parseDockerfile(text) {
  const instructions = [];
  let pending = '';
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (pending === '' && (line.trim() === '' || line.trimStart().startsWith('#'))) continue;
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1)} `;
      continue;
    }
    const full = (pending + line).trim();
    pending = '';
    const match = /^(\w+)\s+([\s\S]*)$/.exec(full);
    if (!match) throw new Error(`Dockerfile: cannot read "${full}"`);
    instructions.push({ keyword: match[1].toUpperCase(), args: match[2].trim() });
  }
  return instructions;
}

/** `--name=value` flags at the start of an instruction's arguments, and the rest. */
function takeFlags(args) {
  const flags = {};
  let rest = args;
  for (let match; (match = /^--([\w-]+)=(\S+)\s+/.exec(rest)); rest = rest.slice(match[0].length)) {
    flags[match[1]] = match[2];
  }
  return { flags, rest };
}

/** .dockerignore as a predicate on context-relative POSIX paths (Docker's rules: last match wins, `!` re-includes). */
export function dockerignore(text) {
  const rules = text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => {
      const negate = line.startsWith('!');
      const pattern = posix.normalize((negate ? line.slice(1) : line).replace(/^\/+/, ''));
      const source = pattern
        .split(/(\*\*\/|\*\*|\*|\?)/)
        .map((part) =>
          part === '**/' ? '(?:.*/)?' : part === '**' ? '.*' : part === '*' ? '[^/]*' : part === '?' ? '[^/]' : part.replace(/[.+^${}()|[\]\\]/g, '\\$&'),
        )
        .join('');
      return { negate, regex: new RegExp(`^${source}$`) };
    });
  return (path) => {
    const prefixes = path.split('/').map((_, index, parts) => parts.slice(0, index + 1).join('/'));
    let excluded = false;
    for (const { negate, regex } of rules) {
      if (prefixes.some((prefix) => regex.test(prefix))) excluded = !negate;
    }
    return excluded;
  };
}

/** Exec form (`["node", "x.js"]`) only: a shell form would depend on the image's shell. */
function execForm(args, what) {
  const command = JSON.parse(args);
  if (!Array.isArray(command) || command.length === 0) throw new Error(`Dockerfile: ${what} must use the exec form`);
  return command;
}

/** KEY=value pairs of an ENV instruction (values may be double-quoted). */
function parseEnv(args) {
  const env = {};
  for (const match of args.matchAll(/(\w+)=("(?:[^"\\]|\\.)*"|\S*)/g)) {
    env[match[1]] = match[2].startsWith('"') ? JSON.parse(match[2]) : match[2];
  }
  return env;
}

/** uid and gid that a container USER maps to here. */
function hostAccount(user) {
  if (process.getuid?.() !== 0) return { uid: process.getuid(), gid: process.getgid(), name: 'the current user' };
  const passwd = readFileSync('/etc/passwd', 'utf8').split('\n').map((line) => line.split(':'));
  const entry = passwd.find((fields) => fields[0] === user) ?? passwd.find((fields) => fields[0] === 'nobody');
  if (!entry) throw new Error(`no account "${user}" or "nobody" to run the relay as`);
  return { uid: Number(entry[2]), gid: Number(entry[3]), name: entry[0] };
}

async function freePort() {
  const server = createServer();
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address();
  await new Promise((ok) => server.close(ok));
  return port;
}

function build(work) {
  const instructions = parseDockerfile(readFileSync(join(repo, 'Dockerfile'), 'utf8'));
  const ignored = dockerignore(existsSync(join(repo, '.dockerignore')) ? readFileSync(join(repo, '.dockerignore'), 'utf8') : '');
  const stages = [];
  let stage;
  const inRoot = (path) => join(stage.root, posix.resolve(stage.workdir, path));

  for (const { keyword, args } of instructions) {
    if (keyword !== 'FROM' && !stage) throw new Error(`Dockerfile: ${keyword} before FROM`);
    switch (keyword) {
      case 'FROM': {
        const [image, as, name] = args.split(/\s+/);
        if (as?.toUpperCase() !== 'AS' || !name) throw new Error(`Dockerfile: name every stage (FROM ${image} AS <name>)`);
        const nodeMajor = /^node:(\d+)/.exec(image)?.[1];
        if (nodeMajor && nodeMajor !== process.versions.node.split('.')[0]) {
          log(`note: stage ${name} is ${image}; this check runs on Node ${process.versions.node}`);
        }
        stage = { name, image, root: join(work, name), workdir: '/', env: {}, user: 'root', volumes: [], exposes: [] };
        mkdirSync(stage.root, { recursive: true });
        stages.push(stage);
        log(`stage ${name} (${image})`);
        break;
      }
      case 'WORKDIR':
        stage.workdir = posix.resolve(stage.workdir, args);
        mkdirSync(join(stage.root, stage.workdir), { recursive: true });
        break;
      case 'ENV':
        Object.assign(stage.env, parseEnv(args));
        break;
      case 'COPY': {
        const { flags, rest } = takeFlags(args);
        const parts = rest.split(/\s+/);
        const destination = parts.pop();
        const from = flags.from && stages.find((candidate) => candidate.name === flags.from);
        if (flags.from && !from) throw new Error(`Dockerfile: COPY --from=${flags.from}: no such stage`);
        const intoDirectory = destination.endsWith('/') || parts.length > 1;
        for (const source of parts) {
          if (/[*?[]/.test(source)) throw new Error(`Dockerfile: COPY ${source}: wildcards are not supported here`);
          const sourcePath = from ? join(from.root, posix.resolve('/', source)) : join(repo, source);
          if (!existsSync(sourcePath)) throw new Error(`Dockerfile: COPY ${source}: not found${from ? ` in stage ${from.name}` : ' in the build context'}`);
          if (!from && ignored(posix.normalize(source))) throw new Error(`Dockerfile: COPY ${source} is excluded by .dockerignore`);
          const target = intoDirectory ? join(inRoot(destination), posix.basename(source)) : inRoot(destination);
          mkdirSync(dirname(target), { recursive: true });
          cpSync(sourcePath, target, {
            recursive: true,
            // The build context is what .dockerignore leaves; another stage's files all go.
            filter: (path) => from !== undefined || path === sourcePath || !ignored(posix.normalize(path.slice(repo.length + 1))),
          });
        }
        log(`COPY ${rest}`);
        break;
      }
      case 'RUN': {
        const { rest } = takeFlags(args);
        log(`RUN ${rest}`);
        for (const command of rest.split('&&').map((part) => part.trim())) {
          const words = command.split(/\s+/);
          // The only steps allowed outside WORKDIR: create a directory and give it to the runtime user.
          if ((words[0] === 'mkdir' || words[0] === 'chown') && words.some((word) => word.startsWith('/'))) {
            const paths = words.filter((word) => word.startsWith('/'));
            if (words[0] === 'mkdir') for (const path of paths) mkdirSync(join(stage.root, path), { recursive: true });
            else {
              const { uid, gid } = hostAccount(words.find((word) => word.includes(':')).split(':')[0]);
              for (const path of paths) if (process.getuid?.() === 0) chownSync(join(stage.root, path), uid, gid);
            }
            continue;
          }
          if (words.some((word) => word.startsWith('/'))) throw new Error(`Dockerfile: RUN ${command}: absolute paths are not supported here`);
          execFileSync('sh', ['-c', command], {
            cwd: join(stage.root, stage.workdir),
            stdio: ['ignore', 'inherit', 'inherit'],
            env: {
              PATH: process.env.PATH,
              HOME: process.env.HOME,
              // npm's cache here plays the BuildKit cache mount's part.
              npm_config_prefer_offline: 'true',
              npm_config_update_notifier: 'false',
              ...stage.env,
            },
          });
        }
        break;
      }
      case 'USER':
        stage.user = args;
        break;
      case 'VOLUME':
        stage.volumes.push(...(args.startsWith('[') ? JSON.parse(args) : args.split(/\s+/)));
        break;
      case 'EXPOSE':
        stage.exposes.push(...args.split(/\s+/));
        break;
      case 'HEALTHCHECK': {
        const { rest } = takeFlags(args);
        if (!rest.startsWith('CMD ')) throw new Error('Dockerfile: HEALTHCHECK must be CMD [...]');
        stage.healthcheck = execForm(rest.slice(4), 'HEALTHCHECK');
        break;
      }
      case 'CMD':
        stage.cmd = execForm(args, 'CMD');
        break;
      default:
        throw new Error(`Dockerfile: ${keyword} is not supported by this check`);
    }
  }
  return stages;
}

/** Packages that only development needs: none may reach the runtime stage. */
const DEVELOPMENT_ONLY = ['jest', '@nestjs/testing', '@swc/core', '@swc/jest', 'nx', 'eslint', 'typescript-eslint', 'fast-check'];

const work = mkdtempSync(join(tmpdir(), 'chat-container-check-'));
// The relay runs as another user: it must reach the image's files, as in a container.
chmodSync(work, 0o755);
let relay;
try {
  const stages = build(work);
  const runtime = stages.at(-1);
  if (!runtime.cmd) throw new Error('Dockerfile: the runtime stage has no CMD');
  if (!runtime.healthcheck) throw new Error('Dockerfile: the runtime stage has no HEALTHCHECK');
  if (runtime.user === 'root' || runtime.user === '0') throw new Error('Dockerfile: the runtime stage runs as root');
  if (runtime.env.HOST !== '0.0.0.0') throw new Error('Dockerfile: the runtime stage must listen on HOST=0.0.0.0');
  if (!runtime.volumes.includes(runtime.env.DATA_DIR)) throw new Error('Dockerfile: DATA_DIR must be a VOLUME');

  const appDir = join(runtime.root, runtime.workdir);
  const present = DEVELOPMENT_ONLY.filter((name) => existsSync(join(appDir, 'node_modules', name)));
  if (present.length > 0) throw new Error(`runtime stage holds development dependencies: ${present.join(', ')}`);
  for (const needed of ['apps/relay/dist/main.js', 'libs/protocol/dist/index.js', 'prisma/migrations']) {
    if (!existsSync(join(appDir, needed))) throw new Error(`runtime stage lacks ${needed}`);
  }
  if (existsSync(join(appDir, 'apps/relay/src')) || existsSync(join(appDir, 'libs/signal-sdk/src'))) {
    throw new Error('runtime stage holds sources');
  }
  log(`runtime stage: ${readdirSync(join(appDir, 'node_modules')).length} top-level packages, no development dependency`);

  const account = hostAccount(runtime.user);
  const spawnOptions = { cwd: appDir, uid: account.uid, gid: account.gid };
  const program = (command) => (command[0] === 'node' ? process.execPath : command[0]);
  // The container's environment: the image's ENV, the volume, and what an operator passes with -e.
  const dataDir = join(runtime.root, runtime.env.DATA_DIR);
  if (process.getuid?.() === 0 && statSync(dataDir).uid !== account.uid) throw new Error(`${runtime.env.DATA_DIR} is not owned by ${runtime.user}`);
  const keysOutput = spawnSync(process.execPath, ['apps/relay/dist/tools/sealed-sender-keys.js'], {
    ...spawnOptions,
    env: { PATH: process.env.PATH, ...runtime.env },
    encoding: 'utf8',
  });
  if (keysOutput.status !== 0) throw new Error(`sealed-sender-keys failed: ${keysOutput.stderr}`);
  const keys = parseEnv(keysOutput.stdout.split('\n').filter((line) => line.startsWith('SEALED_SENDER_SERVER_')).join(' '));
  const port = await freePort();
  const env = {
    PATH: process.env.PATH,
    ...runtime.env,
    DATA_DIR: dataDir,
    PORT: String(port),
    JWT_SECRET: randomBytes(32).toString('base64'),
    ...keys,
  };

  log(`starting ${runtime.cmd.join(' ')} as ${account.name} (uid ${account.uid}) on port ${port}, NODE_ENV=${env.NODE_ENV}, HOST=${env.HOST}`);
  relay = spawn(program(runtime.cmd), runtime.cmd.slice(1), { ...spawnOptions, env, stdio: ['ignore', 'ignore', 'inherit'] });
  const exited = new Promise((ok) => relay.once('exit', (code, signal) => ok({ code, signal })));

  // HEALTHCHECK: as Docker runs it, in the container's environment, until it passes (at most 60 s).
  let healthy = false;
  for (let attempt = 0; attempt < 120 && !healthy; attempt++) {
    if (relay.exitCode !== null) throw new Error(`relay exited with ${relay.exitCode}`);
    const check = spawnSync(program(runtime.healthcheck), runtime.healthcheck.slice(1), { ...spawnOptions, env, timeout: 5000 });
    healthy = check.status === 0;
    if (!healthy) await sleep(500);
  }
  if (!healthy) throw new Error(`HEALTHCHECK ${runtime.healthcheck.join(' ')} did not pass within 60 s`);
  log('HEALTHCHECK passed');

  const status = readFileSync(`/proc/${relay.pid}/status`, 'utf8');
  const uid = Number(/^Uid:\s+(\d+)/m.exec(status)[1]);
  if (uid === 0) throw new Error('the relay runs as root');

  const base = `http://127.0.0.1:${port}`;
  const username = `container_${randomBytes(4).toString('hex')}`;
  const register = await fetch(`${base}/v1/auth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password: 'correct horse battery staple' }),
  });
  if (register.status !== 201) throw new Error(`POST /v1/auth/register answered ${register.status}: ${await register.text()}`);
  const openapi = await fetch(`${base}/v1/openapi.json`);
  if (openapi.status !== 200) throw new Error(`GET /v1/openapi.json answered ${openapi.status}`);
  const written = readdirSync(dataDir);
  if (written.length === 0) throw new Error('the relay wrote nothing into the DATA_DIR volume');
  log(`registered ${username}; DATA_DIR holds ${written.join(', ')}`);

  relay.kill('SIGTERM');
  const { code, signal } = await exited;
  relay = undefined;
  log(`relay stopped on SIGTERM (exit ${code ?? signal})`);
  console.log('container-check: passed');
} finally {
  if (relay && relay.exitCode === null) relay.kill('SIGKILL');
  if (process.env.CONTAINER_CHECK_KEEP === '1') log(`kept ${work}`);
  else rmSync(work, { recursive: true, force: true });
}
