//! PJLink: the JBMIA standard for controlling projectors and displays (TCP 4352).
//!
//! * [`proto`]: the byte-level codec, shared by the simulator and the adapter.
//! * [`sim`]: a strict simulated projector over real TCP, for tests and demos.
//!
//! # The protocol as implemented here
//!
//! * On connect the device sends `PJLINK 0` (no authentication) or `PJLINK 1 <8 hex>`.
//!   With a password, the first command is prefixed by the lowercase hex MD5 of the
//!   random digits followed directly by the password (no space: the spec's own example
//!   prints one by mistake); later commands on the same connection carry no digest. A
//!   wrong digest is answered `PJLINK ERRA`.
//! * Command `%<class><BODY> <param>` + CR; response `%<class><BODY>=<result>` + CR,
//!   at most 136 bytes with a parameter of at most 128 (UTF-8 allowed). Results: `OK`,
//!   a value, or `ERR1` undefined command, `ERR2` out of parameter, `ERR3` unavailable
//!   time, `ERR4` projector/display failure. Replies are due within 2 s.
//! * Class 1 bodies: `POWR` (`?` → 0 standby, 1 on, 2 cooling, 3 warm-up), `INPT`,
//!   `AVMT` (`10`/`11` video, `20`/`21` audio, `30`/`31` both), `ERST` (six digits: fan,
//!   lamp, temperature, cover, filter, other; 0 ok, 1 warning, 2 error), `LAMP` (pairs
//!   `hours on`; laser models answer `ERR1`), `INST`, `NAME` (≤ 64 bytes), `INF1`,
//!   `INF2`, `INFO` (≤ 32, `INFO` often empty), `CLSS`.
//! * Class 2 adds `SNUM`, `SVER`, `INNM`, `IRES`, `RRES`, `FILT`, `RLMP`, `RFIL`, `SVOL`,
//!   `MVOL`, `FREZ`, and `%2INPT`/`%2INST` with input kind 6 (internal) and numbers
//!   `A`..`Z` besides `1`..`9`. Search (`%2SRCH` → `%2ACKN=<mac>`) and status
//!   notifications (`%2LKUP=<mac>`, `%2POWR=`, `%2INPT=`, `%2ERST=`) travel by UDP to
//!   port 4352, not over the TCP connection; some devices nevertheless write a
//!   `%2LKUP` line on TCP, so controllers must skip unsolicited lines.
//! * Devices close a connection idle for about 30 s; some serve one controller at a
//!   time.
//!
//! # Sources
//!
//! * JBMIA, *PJLink Specifications* Version 1.00 (2005) and 2.00 (2017), table of
//!   contents and transcriptions (vdocuments.net, docplayer.net, technodocbox.com), and
//!   <https://pjlink.jbmia.or.jp/english/>.
//! * K. Roberts (OpenLP), Wikipedia draft "User:Alisonken1/Pjlink": 136-byte packets,
//!   UTF-8 parameters; OpenLP `pjlinkcommands.py`: AVMT codes, notifications by UDP.
//! * Hitachi CP-SX8350 manual (manualsdir.com, p. 16): the MD5 example (`a572f60c` +
//!   `password` → `e3d97429…4bde`) and a 30 s idle disconnect.
//! * bitfocus companion-module-generic-pjlink issue 4: the spec example's stray space.
//! * Beckhoff TF6310 PJLink documentation: search and status notification are the UDP
//!   part of class 2; 30 s idle session timeout.
//! * Manuals: Panasonic PT-RZ470 (`LAMP ?` → `ERR1` on a laser model; cover digit),
//!   Sony VPL-FX35 (one controller at a time; NAME 64, INF1/INF2/INFO 32 characters),
//!   Maxell MP-JU4001 (class 2, `INFO` empty), Canon LX-MU500 (`INPT ?` → `ERR3`
//!   without a picture), IDK SWC-2000 (error meanings, 2 s reply), Sanyo PLV-HD2000
//!   (about 90 s cool-down), Panasonic PT-FW430 (warm-up state 3).
//! * Open implementations checked for class 2 details: `pjlink-bridge` (Rust: input
//!   numbers `A`..`Z`, kind 6, `SVOL`/`MVOL`/`FREZ` parameters) and several controllers
//!   listening for `%2LKUP=00:11:22:aa:bb:cc`-style notifications on UDP 4352.

pub mod adapter;
pub mod proto;
pub mod sim;
