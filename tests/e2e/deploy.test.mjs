// deploy/: there is no Docker engine here, so the compose file is checked the way the
// engine would read it (Debian's docker-compose `config`), and everything it and the
// Dockerfile name is checked against the real thing: every DEVBRIDGE_<NAME> variable and
// flag is one the binary accepts, every build target exists, every runtime package is a
// Debian 12 package, every copied path exists, and nginx accepts the proxy config; the TLS
// overlay's certificates (deploy/make-certs), nginx and mosquitto TLS configs too.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { BUILD, ROOT } from './demo.mjs';

const DEPLOY = join(ROOT, 'deploy');
const BINARIES = { ingest: 'services/ingest/devbridge-ingest', push: 'services/push/devbridge-push', sim: 'sim/devbridge-sim' };

const TLS_OVERLAY = ['-f', join(DEPLOY, 'docker-compose.tls.yml')];

function compose(...args) {
  return spawnSync('docker-compose', ['-f', join(DEPLOY, 'docker-compose.yml'), ...args], { encoding: 'utf8' });
}

// The compose file as docker-compose resolves it (with the `overlay` files after it), with
// `profiles`, as JSON.
function resolvedConfig(overlay = [], profiles = ['sim']) {
  const yaml = compose(...overlay, ...profiles.flatMap((p) => ['--profile', p]), 'config');
  assert.equal(yaml.status, 0, yaml.stderr);
  const json = execFileSync('python3', ['-c', 'import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))'],
    { input: yaml.stdout, encoding: 'utf8' });
  return JSON.parse(json);
}

// The flag names a binary lists in --help.
function flagsOf(target) {
  const help = spawnSync(join(BUILD, BINARIES[target]), ['--help'], { encoding: 'utf8' });
  return new Set([...`${help.stdout}${help.stderr}`.matchAll(/--([a-z0-9_]+) \(default/g)].map((m) => m[1]));
}

// Dockerfile stages: target → { env: [names], copies: [source paths], from }.
function dockerfileStages() {
  const stages = {};
  let current = null;
  for (const raw of readFileSync(join(DEPLOY, 'Dockerfile'), 'utf8').split('\n')) {
    const line = raw.trim();
    let m;
    if ((m = line.match(/^FROM\s+(\S+)\s+AS\s+(\S+)/i))) {
      current = stages[m[2]] = { from: m[1], env: [], copies: [], built: [] };
    } else if (current && (m = line.match(/^ENV\s+(\w+)=/))) {
      current.env.push(m[1]);
    } else if (current && (m = line.match(/^COPY\s+--from=build\s+\/build\/(\S+)/))) {
      current.built.push(m[1]);
    } else if (current && (m = line.match(/^COPY\s+(?!--)(\S+)\s+\S+$/))) {
      current.copies.push(m[1]);
    }
  }
  return stages;
}

test('docker-compose accepts the compose file, with and without the sim and cluster profiles', () => {
  for (const args of [['config', '-q'], ['--profile', 'sim', 'config', '-q'], ['--profile', 'cluster', 'config', '-q']]) {
    const r = compose(...args);
    assert.equal(r.status, 0, `docker-compose ${args.join(' ')}: ${r.stderr}`);
  }
  const { services: all, volumes } = resolvedConfig();
  // docker-compose 1.29's `config` lists every profile's services; the cluster's come below.
  const services = Object.fromEntries(Object.entries(all).filter(([, s]) => !(s.profiles ?? []).includes('cluster')));
  assert.deepEqual(Object.keys(services).sort(), ['ingest', 'mosquitto', 'nginx', 'postgres', 'push', 'sim', 'sim-slaves']);
  for (const [name, s] of Object.entries(services)) {
    assert.deepEqual(s.profiles, name.startsWith('sim') ? ['sim'] : undefined, `${name}: only the simulators are optional`);
  }
  assert.ok(!services.push.ports && !services.push.container_name, 'push can be scaled (--scale push=N)');
  assert.ok(services.postgres.volumes.some((v) => String(v).startsWith('pg-data:/var/lib/postgresql/data')), 'PostgreSQL data in a volume');
  assert.ok('pg-data' in volumes);

  // The cluster profile: a second installation on a network of its own.
  const cluster = resolvedConfig([], ['cluster']).services;
  const added = Object.keys(cluster).filter((name) => !(name in services)).sort();
  assert.deepEqual(added, ['ingest-1', 'ingest-2', 'mosquitto-cluster', 'nats-1', 'nats-2', 'nats-3', 'nginx-cluster',
    'postgres-cluster', 'push-1', 'push-2', 'push-3', 'sim-cluster']);
  for (const name of added) {
    assert.deepEqual(cluster[name].profiles, ['cluster'], `${name} is in the cluster profile only`);
    assert.deepEqual(Object.keys(cluster[name].networks), ['cluster'], `${name} is on the cluster network only`);
  }
  const ids = ['ingest-1', 'ingest-2'].map((n) => cluster[n].environment.DEVBRIDGE_MQTT_CLIENT_ID);
  assert.equal(new Set(ids).size, 2, `each ingest replica has its own MQTT session: ${ids}`);
  for (const n of ['push-1', 'push-2', 'push-3']) {
    assert.deepEqual(cluster[n].networks.cluster.aliases, ['push'], `nginx-cluster finds ${n} as push`);
    assert.match(cluster[n].environment.DEVBRIDGE_BUS, /^nats:\/\/nats-1:4222,/);
  }
});

test('every DEVBRIDGE_ variable and flag in compose and the Dockerfile is one the binary accepts', () => {
  for (const overlay of [[], TLS_OVERLAY]) checkNames(resolvedConfig(overlay));
  checkNames(resolvedConfig([], ['cluster']));
});

function checkNames(config) {
  const stages = dockerfileStages();
  let checked = 0;
  for (const [name, service] of Object.entries(config.services)) {
    const target = service.build?.target;
    if (!target) continue;
    assert.ok(stages[target], `Dockerfile has no stage ${target} (service ${name})`);
    assert.equal(service.build.dockerfile, 'deploy/Dockerfile');
    if (!BINARIES[target]) continue;  // mosquitto and nginx, from Debian's packages
    const flags = flagsOf(target);
    assert.ok(flags.size > 5, `--help of ${target} lists its flags`);
    const names = [...Object.keys(service.environment || {}), ...stages[target].env].filter((k) => k.startsWith('DEVBRIDGE_'));
    for (const env of names) {
      assert.ok(flags.has(env.slice('DEVBRIDGE_'.length).toLowerCase()), `${name}: ${env} is not an option of ${BINARIES[target]}`);
      checked++;
    }
    for (const arg of [].concat(service.command || [])) {
      const m = String(arg).match(/^--([a-z0-9_]+)=/);
      assert.ok(m && flags.has(m[1]), `${name}: command argument ${arg} is not an option of ${target}`);
      checked++;
    }
    assert.ok(service.healthcheck || target === 'sim', `${name} has a health check`);
  }
  assert.ok(checked >= 15, `checked ${checked} names`);
}

test('the Dockerfile copies what exists and installs Debian 12 packages', () => {
  const stages = dockerfileStages();
  for (const [name, stage] of Object.entries(stages)) {
    if (!stages[stage.from]) assert.match(stage.from, /^debian:12/, `stage ${name} starts from Debian 12`);
  }
  for (const [name, stage] of Object.entries(stages)) {
    for (const src of stage.copies) assert.ok(existsSync(join(ROOT, src)) || src === '.', `${name}: COPY ${src} does not exist`);
    for (const built of stage.built) assert.ok(existsSync(join(BUILD, built)), `${name}: the build makes no ${built}`);
  }
  const text = readFileSync(join(DEPLOY, 'Dockerfile'), 'utf8');
  const packages = [...text.matchAll(/apt-get install -y --no-install-recommends\s+\\?([\s\S]*?)&&/g)]
    .flatMap((m) => m[1].replace(/\\/g, ' ').split(/\s+/).filter(Boolean));
  for (const p of ['libpqxx-6.4', 'mosquitto', 'nginx']) assert.ok(packages.includes(p), `installs ${p}`);
  if (spawnSync('apt-cache', ['show', 'bash']).status !== 0) {
    console.log('apt has no package lists here: package names not checked');
    return;
  }
  for (const p of packages) assert.equal(spawnSync('apt-cache', ['show', p]).status, 0, `${p} is not a Debian package`);
});

// resolver.conf, which deploy/nginx-entrypoint writes next to nginx.conf in the container,
// made the same way from a resolv.conf naming Docker's DNS server.
function writeResolverConf(dir) {
  const entrypoint = readFileSync(join(DEPLOY, 'nginx-entrypoint'), 'utf8');
  assert.match(entrypoint, /> \/etc\/nginx\/resolver\.conf/, 'the entrypoint writes resolver.conf beside nginx.conf');
  const resolvConf = join(dir, 'resolv.conf');
  writeFileSync(resolvConf, 'search example\nnameserver 127.0.0.11\n');
  const script = entrypoint.replaceAll('/etc/resolv.conf', resolvConf).replaceAll('/etc/nginx/resolver.conf', join(dir, 'resolver.conf'))
    .replace(/^exec .*$/m, 'exit 0');
  const r = spawnSync('sh', ['-c', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(readFileSync(join(dir, 'resolver.conf'), 'utf8'), 'resolver 127.0.0.11 valid=10s ipv6=off;\n');
}

test('nginx accepts the proxy configuration', () => {
  const dir = mkdtempSync(join(tmpdir(), 'devbridge-nginx-'));
  try {
    mkdirSync(join(dir, 'logs'));
    const conf = readFileSync(join(DEPLOY, 'nginx.conf'), 'utf8');
    writeFileSync(join(dir, 'nginx.conf'), conf);
    writeResolverConf(dir);
    const r = spawnSync('nginx', ['-t', '-p', dir, '-c', join(dir, 'nginx.conf'), '-g', `pid ${dir}/nginx.pid; error_log stderr;`],
      { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(conf, /proxy_set_header Upgrade \$http_upgrade/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// The TLS overlay: deploy/make-certs makes what it mounts, the certificates chain to the CA
// with the names the services are reached by, and nginx and mosquitto accept their TLS
// configurations with them (mosquitto really serves TLS with them: a client checks it).
test('make-certs and the TLS overlay: certificates, nginx and mosquitto with TLS', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devbridge-tls-'));
  const certs = join(dir, 'certs');
  let broker = null;
  try {
    execFileSync(join(DEPLOY, 'make-certs'), [certs], { encoding: 'utf8' });
    for (const name of ['internal', 'mosquitto']) {
      execFileSync('openssl', ['verify', '-CAfile', join(certs, 'ca.pem'), join(certs, `${name}.pem`)]);
    }
    const san = execFileSync('openssl', ['x509', '-in', join(certs, 'internal.pem'), '-noout', '-ext', 'subjectAltName'],
      { encoding: 'utf8' });
    for (const host of ['ingest', 'push']) assert.match(san, new RegExp(`DNS:${host}\\b`));

    const { services } = resolvedConfig(TLS_OVERLAY);
    let mounted = 0;
    for (const [name, service] of Object.entries(services)) {
      for (const v of service.volumes || []) {
        const m = String(v).match(/\/certs:(\S+?):ro$/) || (typeof v === 'object' && v.source?.endsWith('/certs') ? [0, v.target] : null);
        if (!m) continue;
        for (const value of Object.values(service.environment || {})) {
          if (String(value).startsWith(`${m[1]}/`)) {
            assert.ok(existsSync(join(certs, String(value).slice(m[1].length + 1))), `${name}: make-certs makes no ${value}`);
            mounted++;
          }
        }
      }
    }
    assert.ok(mounted >= 9, `checked ${mounted} certificate paths`);
    assert.equal(services.ingest.environment.DEVBRIDGE_MQTT_URL, 'mqtts://mosquitto:8883');

    mkdirSync(join(dir, 'logs'));
    const nginxConf = join(dir, 'nginx-tls.conf');
    writeFileSync(nginxConf, readFileSync(join(DEPLOY, 'nginx-tls.conf'), 'utf8').replaceAll('/etc/nginx/certs', certs));
    writeResolverConf(dir);
    const r = spawnSync('nginx', ['-t', '-p', dir, '-c', nginxConf, '-g', `pid ${dir}/nginx.pid; error_log stderr;`],
      { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);

    const plain = 20000 + Math.floor(Math.random() * 20000);
    const tls = plain + 1;
    const brokerConf = join(dir, 'mosquitto.conf');
    writeFileSync(brokerConf, readFileSync(join(DEPLOY, 'mosquitto-tls.conf'), 'utf8')
      .replaceAll('/etc/mosquitto/certs', certs)
      .replace('listener 1883', `listener ${plain} 127.0.0.1`)
      .replace('listener 8883', `listener ${tls} 127.0.0.1`)
      .replace('/var/lib/mosquitto/', `${dir}/`)
      .replace(/^user .*$/m, `user ${execFileSync('id', ['-un'], { encoding: 'utf8' }).trim()}`));
    broker = spawn('/usr/sbin/mosquitto', ['-c', brokerConf], { stdio: 'ignore' });
    let ok = false;
    for (let i = 0; i < 50 && !ok; i++) {
      await new Promise((done) => setTimeout(done, 100));
      ok = spawnSync('mosquitto_pub', ['-h', 'localhost', '-p', String(tls), '--cafile', join(certs, 'ca.pem'),
        '-t', 'tls/check', '-m', 'x', '-q', '1']).status === 0;
    }
    assert.ok(ok, 'a client checking ca.pem publishes over TLS to mosquitto-tls.conf');
  } finally {
    broker?.kill();
    rmSync(dir, { recursive: true, force: true });
  }
});
