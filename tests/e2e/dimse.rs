//! A minimal, independent DICOM upper-layer + DIMSE client, to send what
//! DCMTK will not: garbage data sets, truncated data sets, and commands whose
//! UIDs disagree with the data set. Written from PS3.8 §9.3 and PS3.7 §9.3.1,
//! sharing no code with the agent.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const APP_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

const OUR_MAX_PDU: u32 = 65536;

pub enum Outcome {
    Accepted(Association),
    Rejected { result: u8, source: u8, reason: u8 },
    Aborted,
    Closed,
}

pub struct Association {
    stream: TcpStream,
    peer_max_pdu: usize,
    /// (presentation context id, result, transfer syntax)
    pub contexts: Vec<(u8, u8, String)>,
}

fn item(t: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![t, 0];
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn ae16(s: &str) -> [u8; 16] {
    let mut a = [b' '; 16];
    a[..s.len()].copy_from_slice(s.as_bytes());
    a
}

fn read_pdu(s: &mut TcpStream) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut h = [0u8; 6];
    let mut got = 0;
    while got < 6 {
        let n = s.read(&mut h[got..])?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "PDU header cut",
                ))
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize;
    if len > 64 << 20 {
        return Err(io::Error::other(format!("PDU of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(Some((h[0], body)))
}

/// The bytes of an A-ASSOCIATE-RQ PDU: contexts are (id, abstract syntax,
/// transfer syntaxes).
pub fn associate_rq(calling: &str, called: &str, contexts: &[(u8, &str, &[&str])]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&ae16(called));
    body.extend_from_slice(&ae16(calling));
    body.extend_from_slice(&[0u8; 32]);
    body.extend(item(0x10, APP_CONTEXT.as_bytes()));
    for (id, abs, tss) in contexts {
        let mut pc = vec![*id, 0, 0, 0];
        pc.extend(item(0x30, abs.as_bytes()));
        for ts in *tss {
            pc.extend(item(0x40, ts.as_bytes()));
        }
        body.extend(item(0x20, &pc));
    }
    let mut ui = item(0x51, &OUR_MAX_PDU.to_be_bytes());
    ui.extend(item(0x52, b"1.2.826.0.1.3680043.9.7433.1.1"));
    ui.extend(item(0x55, b"E2E_RAW"));
    body.extend(item(0x50, &ui));
    let mut pdu = vec![0x01, 0];
    pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
    pdu.extend(body);
    pdu
}

/// Open an association: contexts are (id, abstract syntax, transfer syntaxes).
pub fn associate(
    port: u16,
    calling: &str,
    called: &str,
    contexts: &[(u8, &str, &[&str])],
) -> io::Result<Outcome> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(&associate_rq(calling, called, contexts))?;
    let Some((t, b)) = read_pdu(&mut stream)? else {
        return Ok(Outcome::Closed);
    };
    match t {
        0x02 => {
            let mut contexts = Vec::new();
            let mut peer_max_pdu = 0usize;
            let mut i = 68;
            while i + 4 <= b.len() {
                let it = b[i];
                let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
                let v = &b[i + 4..(i + 4 + len).min(b.len())];
                match it {
                    0x21 if v.len() >= 4 => {
                        let mut ts = String::new();
                        if v.len() >= 8 && v[4] == 0x40 {
                            let l = u16::from_be_bytes([v[6], v[7]]) as usize;
                            ts = String::from_utf8_lossy(&v[8..(8 + l).min(v.len())])
                                .trim_end_matches(['\0', ' '])
                                .to_string();
                        }
                        contexts.push((v[0], v[2], ts));
                    }
                    0x50 => {
                        let mut j = 0;
                        while j + 4 <= v.len() {
                            let st = v[j];
                            let sl = u16::from_be_bytes([v[j + 2], v[j + 3]]) as usize;
                            if st == 0x51 && sl == 4 && j + 8 <= v.len() {
                                peer_max_pdu =
                                    u32::from_be_bytes([v[j + 4], v[j + 5], v[j + 6], v[j + 7]])
                                        as usize;
                            }
                            j += 4 + sl;
                        }
                    }
                    _ => {}
                }
                i += 4 + len;
            }
            if peer_max_pdu == 0 {
                peer_max_pdu = 16384;
            }
            Ok(Outcome::Accepted(Association {
                stream,
                peer_max_pdu,
                contexts,
            }))
        }
        0x03 if b.len() >= 4 => Ok(Outcome::Rejected {
            result: b[1],
            source: b[2],
            reason: b[3],
        }),
        0x07 => Ok(Outcome::Aborted),
        other => Err(io::Error::other(format!(
            "unexpected PDU type {other:#04x} in answer to A-ASSOCIATE-RQ"
        ))),
    }
}

fn elem(out: &mut Vec<u8>, group: u16, element: u16, value: &[u8]) {
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

fn uid_value(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// A C-STORE-RQ command set (Implicit VR Little Endian).
pub fn store_command(msg_id: u16, sop_class: &str, sop_instance: &str) -> Vec<u8> {
    let mut body = Vec::new();
    elem(&mut body, 0x0000, 0x0002, &uid_value(sop_class));
    elem(&mut body, 0x0000, 0x0100, &0x0001u16.to_le_bytes());
    elem(&mut body, 0x0000, 0x0110, &msg_id.to_le_bytes());
    elem(&mut body, 0x0000, 0x0700, &0u16.to_le_bytes());
    elem(&mut body, 0x0000, 0x0800, &0x0000u16.to_le_bytes());
    elem(&mut body, 0x0000, 0x1000, &uid_value(sop_instance));
    let mut cmd = Vec::new();
    elem(&mut cmd, 0x0000, 0x0000, &(body.len() as u32).to_le_bytes());
    cmd.extend(body);
    cmd
}

/// Find a US element in an Implicit VR LE command set.
fn command_us(cmd: &[u8], group: u16, element: u16) -> Option<u16> {
    let mut i = 0;
    while i + 8 <= cmd.len() {
        let g = u16::from_le_bytes([cmd[i], cmd[i + 1]]);
        let e = u16::from_le_bytes([cmd[i + 2], cmd[i + 3]]);
        let l = u32::from_le_bytes([cmd[i + 4], cmd[i + 5], cmd[i + 6], cmd[i + 7]]) as usize;
        let v = cmd.get(i + 8..i + 8 + l)?;
        if g == group && e == element && l == 2 {
            return Some(u16::from_le_bytes([v[0], v[1]]));
        }
        i += 8 + l;
    }
    None
}

/// A request command set (Implicit VR Little Endian) with this command
/// field, Message ID, Affected SOP Class UID and Command Data Set Type
/// (0x0101: none follows): a C-FIND-RQ, an N-ACTION-RQ…
pub fn request_command(field: u16, msg_id: u16, sop_class: &str, data_set_type: u16) -> Vec<u8> {
    let mut body = Vec::new();
    elem(&mut body, 0x0000, 0x0002, &uid_value(sop_class));
    elem(&mut body, 0x0000, 0x0100, &field.to_le_bytes());
    elem(&mut body, 0x0000, 0x0110, &msg_id.to_le_bytes());
    elem(&mut body, 0x0000, 0x0700, &0u16.to_le_bytes());
    elem(&mut body, 0x0000, 0x0800, &data_set_type.to_le_bytes());
    let mut cmd = Vec::new();
    elem(&mut cmd, 0x0000, 0x0000, &(body.len() as u32).to_le_bytes());
    cmd.extend(body);
    cmd
}

/// One P-DATA-TF PDU holding one PDV.
pub fn p_data(pc: u8, is_command: bool, last: bool, data: &[u8]) -> Vec<u8> {
    let pdv_len = (data.len() + 2) as u32;
    let mut pdu = vec![0x04, 0];
    pdu.extend_from_slice(&(pdv_len + 4).to_be_bytes());
    pdu.extend_from_slice(&pdv_len.to_be_bytes());
    pdu.push(pc);
    pdu.push(u8::from(is_command) | if last { 2 } else { 0 });
    pdu.extend_from_slice(data);
    pdu
}

impl Association {
    /// The peer's Maximum Length (from its A-ASSOCIATE-AC).
    pub fn peer_max_pdu(&self) -> usize {
        self.peer_max_pdu
    }

    /// Write bytes as they are (hand-made PDUs).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Wait (up to `limit`) for the next PDU: (type, body), or None when the
    /// peer closed.
    pub fn next_pdu(&mut self, limit: Duration) -> io::Result<Option<(u8, Vec<u8>)>> {
        self.stream.set_read_timeout(Some(limit))?;
        read_pdu(&mut self.stream)
    }

    /// Send a command (and a data set, if any) on `pc` and read the
    /// response: (command field, status).
    pub fn request(
        &mut self,
        pc: u8,
        command: &[u8],
        data: Option<&[u8]>,
    ) -> io::Result<(u16, u16)> {
        self.send_pdvs(pc, true, command)?;
        if let Some(d) = data {
            self.send_pdvs(pc, false, d)?;
        }
        let response = self.read_response()?;
        let field = command_us(&response, 0x0000, 0x0100)
            .ok_or_else(|| io::Error::other("response without a command field"))?;
        let status = command_us(&response, 0x0000, 0x0900)
            .ok_or_else(|| io::Error::other("response without a status"))?;
        Ok((field, status))
    }

    /// Send a C-STORE-RQ command and the first `first` bytes of its data set
    /// (not the last fragment): the store is left in the middle.
    pub fn begin_store(
        &mut self,
        pc: u8,
        msg_id: u16,
        sop_class: &str,
        sop_instance: &str,
        first: &[u8],
    ) -> io::Result<()> {
        let cmd = store_command(msg_id, sop_class, sop_instance);
        self.send_pdvs(pc, true, &cmd)?;
        self.send_pdvs_ending(pc, false, first, false)
    }

    pub fn accepted_ts(&self, pc: u8) -> Option<&str> {
        self.contexts
            .iter()
            .find(|(id, result, _)| *id == pc && *result == 0)
            .map(|(_, _, ts)| ts.as_str())
    }

    fn send_pdvs(&mut self, pc: u8, is_command: bool, data: &[u8]) -> io::Result<()> {
        self.send_pdvs_ending(pc, is_command, data, true)
    }

    /// Send `data` as PDVs; the last one carries the "last fragment" bit only
    /// when `last` is true.
    fn send_pdvs_ending(
        &mut self,
        pc: u8,
        is_command: bool,
        data: &[u8],
        last: bool,
    ) -> io::Result<()> {
        let max = self.peer_max_pdu.saturating_sub(6).clamp(16, 1 << 20);
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![&[][..]]
        } else {
            data.chunks(max).collect()
        };
        let n = chunks.len();
        for (k, c) in chunks.into_iter().enumerate() {
            let mut mch = if is_command { 1u8 } else { 0 };
            if last && k + 1 == n {
                mch |= 2;
            }
            let pdv_len = (c.len() + 2) as u32;
            let mut pdu = Vec::with_capacity(c.len() + 12);
            pdu.push(0x04);
            pdu.push(0);
            pdu.extend_from_slice(&(pdv_len + 4).to_be_bytes());
            pdu.extend_from_slice(&pdv_len.to_be_bytes());
            pdu.push(pc);
            pdu.push(mch);
            pdu.extend_from_slice(c);
            self.stream.write_all(&pdu)?;
        }
        Ok(())
    }

    /// Send one C-STORE-RQ with these command UIDs and these data set bytes;
    /// return the response status.
    pub fn store(
        &mut self,
        pc: u8,
        msg_id: u16,
        sop_class: &str,
        sop_instance: &str,
        dataset: &[u8],
    ) -> io::Result<u16> {
        self.store_in_two_parts(
            pc,
            msg_id,
            sop_class,
            sop_instance,
            dataset,
            dataset.len(),
            || {},
        )
    }

    /// As [`Association::store`], but the data set goes out in two parts
    /// with `between` called after the first `split` bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn store_in_two_parts(
        &mut self,
        pc: u8,
        msg_id: u16,
        sop_class: &str,
        sop_instance: &str,
        dataset: &[u8],
        split: usize,
        between: impl FnOnce(),
    ) -> io::Result<u16> {
        let cmd = store_command(msg_id, sop_class, sop_instance);
        self.send_pdvs(pc, true, &cmd)?;
        let (first, rest) = dataset.split_at(split.min(dataset.len()));
        if !rest.is_empty() {
            self.send_pdvs_ending(pc, false, first, false)?;
            between();
            self.send_pdvs(pc, false, rest)?;
        } else {
            self.send_pdvs(pc, false, first)?;
        }
        let response = self.read_response()?;
        let command_field = command_us(&response, 0x0000, 0x0100);
        if command_field != Some(0x8001) {
            return Err(io::Error::other(format!(
                "expected a C-STORE-RSP (8001H), got command field {command_field:?}"
            )));
        }
        command_us(&response, 0x0000, 0x0900)
            .ok_or_else(|| io::Error::other("C-STORE-RSP without a status"))
    }

    /// Read PDUs until a complete command set arrives; its bytes.
    fn read_response(&mut self) -> io::Result<Vec<u8>> {
        let mut response = Vec::new();
        loop {
            let Some((t, b)) = read_pdu(&mut self.stream)? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the C-STORE-RSP",
                ));
            };
            match t {
                0x04 => {
                    let mut i = 0;
                    let mut last_command = false;
                    while i + 6 <= b.len() {
                        let l = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
                        let mch = b[i + 5];
                        let end = (i + 4 + l).min(b.len());
                        if mch & 1 == 1 {
                            response.extend_from_slice(&b[i + 6..end]);
                            if mch & 2 == 2 {
                                last_command = true;
                            }
                        }
                        i = end;
                    }
                    if last_command {
                        break;
                    }
                }
                0x07 => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "A-ABORT instead of a response",
                    ));
                }
                other => {
                    return Err(io::Error::other(format!(
                        "unexpected PDU type {other:#04x} waiting for a response"
                    )));
                }
            }
        }
        Ok(response)
    }

    /// Wait (up to the socket's read timeout) for the next PDU without
    /// sending anything: its type, or None when the peer closed.
    pub fn next_pdu_type(&mut self, limit: Duration) -> io::Result<Option<u8>> {
        self.stream.set_read_timeout(Some(limit))?;
        Ok(read_pdu(&mut self.stream)?.map(|(t, _)| t))
    }

    /// A-RELEASE-RQ; waits for A-RELEASE-RP.
    pub fn release(mut self) -> io::Result<()> {
        self.stream.write_all(&[0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])?;
        match read_pdu(&mut self.stream)? {
            Some((0x06, _)) => Ok(()),
            Some((t, _)) => Err(io::Error::other(format!(
                "expected A-RELEASE-RP, got PDU type {t:#04x}"
            ))),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed instead of A-RELEASE-RP",
            )),
        }
    }
}

/// An association from `calling` to the agent on `port` proposing CT Image
/// Storage in Explicit VR Little Endian only; panics unless accepted (with
/// the agent's log tail when given).
pub fn associate_ct(port: u16, calling: &str, log_tail: &dyn Fn() -> String) -> Association {
    match associate(
        port,
        calling,
        crate::harness::AGENT_AE,
        &[(1, CT_IMAGE_STORAGE, &[EXPLICIT_LE])],
    )
    .expect("associating")
    {
        Outcome::Accepted(a) => a,
        _ => panic!("association not accepted{}", log_tail()),
    }
}
