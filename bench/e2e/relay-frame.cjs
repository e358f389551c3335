// What both Node.js peers of bench/e2e do with one MQTT message, as devbridge does on its
// way to the browser: read the Modbus reply (hex text), check its CRC-16/MODBUS, decode the
// registers by bench/registers_bench.json's map, and make a JSON frame in the shape of
// devbridge's device.data (so one viewer reads every system). Null for a bad frame.
// CommonJS, because Node-RED loads it through functionGlobalContext (settings.cjs).
'use strict';

function crc16(bytes, end) {
  let crc = 0xffff;
  for (let i = 0; i < end; i++) {
    crc ^= bytes[i];
    for (let b = 0; b < 8; b++) crc = crc & 1 ? (crc >>> 1) ^ 0xa001 : crc >>> 1;
  }
  return crc;
}

function relayFrame(topic, payload) {
  const bytes = Buffer.from(payload.toString('latin1').replace(/\s+/g, ''), 'hex');
  const n = bytes.length;
  if (n < 5 || crc16(bytes, n - 2) !== bytes.readUInt16LE(n - 2)) return null;
  if (bytes[2] !== n - 5 || bytes[2] < 20) return null; // byte count; the map needs 10 registers
  const reg = (i) => bytes.readUInt16BE(3 + 2 * i);
  const values = {
    seq: { value: reg(0) * 65536 + reg(1), unit: '' },
    sent_us: { value: ((reg(2) * 65536 + reg(3)) * 65536 + reg(4)) * 65536 + reg(5), unit: '' },
    temperature: { value: bytes.readInt16BE(3 + 12) / 10, unit: '°C' },
    humidity: { value: reg(7) / 10, unit: '%RH' },
    voltage: { value: bytes.readFloatBE(3 + 16), unit: 'V' },
  };
  return JSON.stringify({
    type: 'device.data',
    code: 200,
    msg: 'success',
    data: { deviceId: topic.split('/')[1], response: bytes.toString('hex').toUpperCase(), values, receivedAt: Date.now() },
  });
}

module.exports = { relayFrame };
