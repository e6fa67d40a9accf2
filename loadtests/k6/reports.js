// The report mix as analysts and dashboards ask it, at a constant rate,
// in JSON with a share in CSV, and conditional repeats (If-None-Match).
//
//   k6 run --summary-export reports.json loadtests/k6/reports.js
//
// RATE (requests/s, default 10), DURATION (default 1m), VUS (default 10).
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, REPORTS, arrival, ms, num, requireTokens, token } from './lib.js';

export const options = {
  scenarios: {
    reports: arrival('reports', num('RATE', 10), __ENV.DURATION || '1m', num('VUS', 10)),
  },
  thresholds: {
    'http_req_failed{scenario:reports}': ['rate<0.01'],
    'http_req_duration{scenario:reports}': [`p(95)<${ms(500)}`, `p(99)<${ms(1000)}`],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  requireTokens();
}

/** One report of the mix; every fifth as CSV; a repeat with its ETag. */
export function reports() {
  const query = REPORTS[Math.floor(Math.random() * REPORTS.length)];
  const csv = Math.random() < 0.2;
  const headers = {
    Authorization: `Bearer ${token()}`,
    Accept: csv ? 'text/csv' : 'application/json',
  };
  const url = `${BASE_URL}/v1/reports/spend?${query}`;
  const response = http.get(url, {
    headers,
    tags: { name: 'GET /v1/reports/spend' },
    responseCallback: http.expectedStatuses(200),
  });
  check(response, {
    'report answered (200)': (r) => r.status === 200,
    'report has rows': (r) => {
      if (r.status !== 200 || !r.body) {
        return false;
      }
      if (csv) {
        return r.body.startsWith('group,');
      }
      try {
        return Array.isArray(JSON.parse(r.body).rows);
      } catch (e) {
        return false;
      }
    },
  });
  const tag = response.headers.Etag;
  if (tag && Math.random() < 0.3) {
    // A dashboard refreshing: unchanged data answers 304 (or 200 when a
    // commit landed in between).
    const again = http.get(url, {
      headers: { ...headers, 'If-None-Match': tag },
      tags: { name: 'GET /v1/reports/spend (conditional)' },
      responseCallback: http.expectedStatuses(200, 304),
    });
    check(again, { 'conditional repeat is 304 or 200': (r) => r.status === 304 || r.status === 200 });
  }
}

export default reports;
