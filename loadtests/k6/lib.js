// Shared parts of the Spendstream k6 scenarios: settings from the
// environment, realistic records, the report mix, and the summary export.
//
// Environment (every scenario):
//   BASE_URL      Spendstream's HTTP address (default http://127.0.0.1:8080)
//   SLO_SCALE     multiplies every latency threshold (default 1)
//   TOKENS        comma-separated bearer tokens, one per tenant; each needs
//                 the roles its scenario uses (ingest, read, or both for
//                 mixed.js): `spendstream token --tenant t1 --role ingest --role read`
//
// k6 prints its summary at the end; `--summary-export FILE.json` writes it
// as JSON too. A broken threshold makes k6 exit 99.
import exec from 'k6/execution';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');

export const TOKENS = (__ENV.TOKENS || '')
  .split(',')
  .map((t) => t.trim())
  .filter((t) => t.length > 0);

/** A number from the environment, or `fallback`. */
export function num(name, fallback) {
  const value = __ENV[name];
  if (value === undefined || value === '') {
    return fallback;
  }
  const parsed = Number(value);
  if (!Number.isFinite(parsed)) {
    throw new Error(`${name} must be a number, got ${value}`);
  }
  return parsed;
}

/** Stops the run at once when no token was given. */
export function requireTokens() {
  if (TOKENS.length === 0) {
    exec.test.abort('set TOKENS to one or more bearer tokens (comma-separated)');
  }
}

/** The token of this VU: each VU is one tenant's importer or analyst, so
 * its re-sends go to the tenant that first got the record. */
export function token() {
  return TOKENS[exec.vu.idInTest % TOKENS.length];
}

/**
 * A latency limit of `ms` milliseconds, scaled by SLO_SCALE (default 1):
 * the smoke run in scripts/test, a debug build on a busy machine, relaxes
 * latency with it and keeps the error-rate and check thresholds as they are.
 */
export function ms(limit) {
  return limit * num('SLO_SCALE', 1);
}

const MERCHANTS = [
  ['SQ *BLUE BOTTLE COFFEE #123', '5814'],
  ['UNITED AIRLINES 0162312345678', '4511'],
  ['MARRIOTT DOWNTOWN SEATTLE', '7011'],
  ['UBER *TRIP HELP.UBER.COM', '4121'],
  ['AMZN Mktp US*2K4LL1Z40', '5942'],
  ['SHELL OIL 57444581605', '5541'],
  ['WHOLEFDS MKT #10234', '5411'],
  ['DELTA AIR LINES 0062345678901', '4511'],
];
const CURRENCIES = [['USD', 2], ['USD', 2], ['EUR', 2], ['GBP', 2], ['JPY', 0]];
const STATUSES = ['posted', 'posted', 'posted', 'pending', 'reversed', 'declined'];

/** A random integer in [0, n). */
function below(n) {
  return Math.floor(Math.random() * n);
}

/** A valid record of the record contract, `id` its external id. */
export function record(id) {
  const [merchant, mcc] = MERCHANTS[below(MERCHANTS.length)];
  const [currency, exponent] = CURRENCIES[below(CURRENCIES.length)];
  const minor = 100 + below(250000);
  const amount = exponent === 0 ? String(minor) : (minor / 10 ** exponent).toFixed(exponent);
  const day = new Date(Date.UTC(2026, 0, 1) + below(330) * 86400000).toISOString().slice(0, 10);
  return {
    source: 'k6',
    external_id: id,
    account_id: `card_tok_${below(400)}`,
    status: STATUSES[below(STATUSES.length)],
    transaction_date: day,
    amount,
    currency,
    merchant_name: merchant,
    merchant_mcc: mcc,
    employee_id: `emp-${below(120)}`,
    memo: below(4) === 0 ? 'client dinner' : undefined,
  };
}

/** One invalid record: each fails a different rule of the contract. */
function invalid(id) {
  const bad = record(id);
  switch (below(4)) {
    case 0:
      bad.amount = '12.345'; // more decimals than USD has
      bad.currency = 'USD';
      break;
    case 1:
      bad.transaction_date = '2026-02-30';
      break;
    case 2:
      bad.currency = 'XYZ';
      break;
    default:
      bad.memo = 'card 4111 1111 1111 1111'; // a card number: pan_detected
  }
  return bad;
}

/**
 * An NDJSON body of `size` records: a share `resend` of them re-sends of
 * records sent before (the same external id: a new version) and a share
 * `invalidShare` invalid. Returns the body and how many are invalid.
 */
export function batch(size, resend, invalidShare) {
  const vu = exec.vu.idInTest;
  const iteration = exec.vu.iterationInInstance;
  const lines = [];
  let invalidCount = 0;
  for (let i = 0; i < size; i += 1) {
    let id = `vu${vu}-it${iteration}-r${i}`;
    if (iteration > 0 && Math.random() < resend) {
      id = `vu${vu}-it${below(iteration)}-r${below(size)}`;
    }
    if (Math.random() < invalidShare) {
      invalidCount += 1;
      lines.push(JSON.stringify(invalid(id)));
    } else {
      lines.push(JSON.stringify(record(id)));
    }
  }
  return { body: `${lines.join('\n')}\n`, invalid: invalidCount };
}

/** The report mix analysts and dashboards send. */
export const REPORTS = [
  'group_by=category',
  'group_by=merchant&top=10',
  'group_by=month&from=2026-01-01&to=2026-12-31',
  'group_by=currency',
  'group_by=day&from=2026-03-01&to=2026-03-31',
  'group_by=employee&status=posted',
  'group_by=account&min_amount_minor=10000',
  'group_by=week&from=2026-01-05&to=2026-06-28&currency=USD',
];

/**
 * A constant-arrival-rate scenario running `exec` at `rate` requests/s for
 * `duration`, with `vus` VUs ready and up to four times as many.
 */
export function arrival(exec, rate, duration, vus) {
  return {
    executor: 'constant-arrival-rate',
    exec,
    rate,
    timeUnit: '1s',
    duration,
    preAllocatedVUs: vus,
    maxVUs: vus * 4,
  };
}
