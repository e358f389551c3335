// A small line chart on a <canvas>: one series of {at, value}, time on x, with gridlines,
// axis labels and the latest value. Redrawn whole on each update (a few hundred points).
import { formatValue } from './format.js';

export function drawChart(canvas, points, { unit = '', color = '#2563eb' } = {}) {
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const style = getComputedStyle(canvas);
  const ink = style.getPropertyValue('--chart-ink').trim() || '#64748b';
  const grid = style.getPropertyValue('--chart-grid').trim() || '#e2e8f0';
  ctx.font = '11px system-ui, sans-serif';
  if (points.length === 0) {
    ctx.fillStyle = ink;
    ctx.fillText('no numeric readings yet', 12, height / 2);
    return;
  }
  const left = 52;
  const right = 12;
  const top = 12;
  const bottom = 24;
  let min = Math.min(...points.map((p) => p.value));
  let max = Math.max(...points.map((p) => p.value));
  if (min === max) {
    min -= 1;
    max += 1;
  }
  const pad = (max - min) * 0.08;
  min -= pad;
  max += pad;
  const t0 = points[0].at;
  const t1 = Math.max(points[points.length - 1].at, t0 + 1000);
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => top + (1 - (v - min) / (max - min)) * (height - top - bottom);

  ctx.strokeStyle = grid;
  ctx.fillStyle = ink;
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = min + ((max - min) * i) / 4;
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(left, yy);
    ctx.lineTo(width - right, yy);
    ctx.stroke();
    ctx.fillText(formatValue(Number(v.toPrecision(4))), 4, yy + 4);
  }
  for (const t of [t0, (t0 + t1) / 2, t1]) {
    const label = new Date(t).toLocaleTimeString();
    const w = ctx.measureText(label).width;
    ctx.fillText(label, Math.min(Math.max(x(t) - w / 2, left), width - right - w), height - 6);
  }
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.beginPath();
  points.forEach((p, i) => (i === 0 ? ctx.moveTo(x(p.at), y(p.value)) : ctx.lineTo(x(p.at), y(p.value))));
  ctx.stroke();
  const last = points[points.length - 1];
  ctx.fillStyle = color;
  ctx.beginPath();
  ctx.arc(x(last.at), y(last.value), 3, 0, Math.PI * 2);
  ctx.fill();
  const label = `${formatValue(last.value)} ${unit}`.trim();
  ctx.fillText(label, Math.max(left, x(last.at) - ctx.measureText(label).width - 6), Math.max(top + 10, y(last.value) - 6));
}
