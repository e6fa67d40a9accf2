// Ingest at a constant arrival rate: NDJSON batches of realistic records
// for several tenants, with a share of re-sends (new versions) and of
// invalid records (rejected by index and code, the rest accepted).
//
//   k6 run --summary-export ingest.json loadtests/k6/ingest.js
//
// RATE (requests/s, default 20), DURATION (default 1m), BATCH (records per
// request, default 500), RESEND (share re-sent, default 0.05), INVALID
// (share invalid, default 0.01), VUS (pre-allocated, default 20).
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { BASE_URL, arrival, batch, ms, num, requireTokens, token } from './lib.js';

const accepted = new Counter('records_accepted');
const rejected = new Counter('records_rejected');
const size = num('BATCH', 500);

export const options = {
  scenarios: {
    ingest: arrival('ingest', num('RATE', 20), __ENV.DURATION || '1m', num('VUS', 20)),
  },
  thresholds: {
    'http_req_failed{scenario:ingest}': ['rate<0.01'],
    'http_req_duration{scenario:ingest}': [`p(95)<${ms(1000)}`, `p(99)<${ms(2000)}`],
    // Every invalid record is rejected and nothing else is.
    checks: ['rate>0.99'],
  },
};

export function setup() {
  requireTokens();
}

/** One request: a batch in, its answer checked against what was sent. */
export function ingest() {
  const { body, invalid } = batch(size, num('RESEND', 0.05), num('INVALID', 0.01));
  const response = http.post(`${BASE_URL}/v1/expenses`, body, {
    headers: {
      Authorization: `Bearer ${token()}`,
      'Content-Type': 'application/x-ndjson',
    },
    tags: { name: 'POST /v1/expenses' },
    responseCallback: http.expectedStatuses(202),
  });
  const answer = response.status === 202 ? response.json() : null;
  check(response, {
    'batch accepted (202)': (r) => r.status === 202,
    'valid records accepted, invalid ones rejected': () =>
      answer !== null && answer.accepted === size - invalid && answer.rejected_total === invalid,
  });
  if (answer !== null) {
    accepted.add(answer.accepted);
    rejected.add(answer.rejected_total);
  }
}

export default ingest;
