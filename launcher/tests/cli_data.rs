//! `metaloop data fetch | check` against a local HTTP server started in the test (these
//! machines reach no other host): zips generated in Omniglot's exact structure, a download cut
//! off and resumed with a Range request, a bad structure, a corrupt entry (the zip's CRC), a
//! wrong MD5 and an unreachable server. Every failure is one line with exit code 2 and leaves
//! no file under its final name.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};

use md5::Digest;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metaloop-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One 28×28 grayscale PNG, the bytes of every drawing.
fn png() -> Vec<u8> {
    let img =
        image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 9 + y * 5) % 256) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A zip of `set/<alphabet>/<character>/<drawing>.png` with `characters` characters spread
/// over `alphabets` alphabets, 20 drawings each, stored uncompressed.
fn omniglot_zip(set: &str, alphabets: usize, characters: usize) -> Vec<u8> {
    let png = png();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for c in 0..characters {
        let alphabet = c % alphabets;
        for d in 1..=20 {
            let name = format!("{set}/Alphabet_{alphabet:02}/character{c:04}/{c:04}_{d:02}.png");
            zip.start_file(name, opts).unwrap();
            zip.write_all(&png).unwrap();
        }
    }
    zip.finish().unwrap().into_inner()
}

/// Omniglot's two zips with the real structure (30 + 20 alphabets, 964 + 659 characters).
fn standard() -> &'static (Vec<u8>, Vec<u8>) {
    static ZIPS: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    ZIPS.get_or_init(|| {
        (
            omniglot_zip("images_background", 30, 964),
            omniglot_zip("images_evaluation", 20, 659),
        )
    })
}

fn md5_hex(bytes: &[u8]) -> String {
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A one-thread HTTP/1.1 file server with Range support. `cut_first`: the first GET of that
/// path announces the whole length but sends only half the body, then closes.
struct Server {
    url: String,
    requests: Arc<Mutex<Vec<(String, Option<String>)>>>,
}

fn serve(files: HashMap<String, Vec<u8>>, cut_first: Option<&str>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/omniglot/python", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    let mut cut = cut_first.map(|p| format!("/omniglot/python/{p}"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (path, range) = read_request(&stream);
            log.lock().unwrap().push((path.clone(), range.clone()));
            let name = path.trim_start_matches("/omniglot/python/");
            let truncate = cut.as_deref() == Some(path.as_str());
            if truncate {
                cut = None;
            }
            respond(stream, files.get(name), range.as_deref(), truncate);
        }
    });
    Server { url, requests }
}

fn read_request(stream: &TcpStream) -> (String, Option<String>) {
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    (path, range)
}

fn respond(mut stream: TcpStream, body: Option<&Vec<u8>>, range: Option<&str>, truncate: bool) {
    let Some(body) = body else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let start: usize = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len = body.len();
    let head = if start > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{len}\r\nConnection: close\r\n\r\n",
            len - start,
            len - 1
        )
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n")
    };
    let end = if truncate { len / 2 } else { len };
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body[start..end]);
    let _ = stream.flush();
    if truncate {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    // Drain what the client may still send, so that closing does not reset the connection.
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(50)));
    let _ = stream.read(&mut [0u8; 64]);
}

fn metaloop(cwd: &Path, url: &str, md5s: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_metaloop"));
    cmd.current_dir(cwd)
        .args(args)
        .env("METALOOP_OMNIGLOT_URL", url);
    match md5s {
        Some(m) => cmd.env("METALOOP_OMNIGLOT_MD5", m),
        None => cmd.env_remove("METALOOP_OMNIGLOT_MD5"),
    };
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit code 2 and exactly one line on stderr; returns that line.
fn bad_input(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout {}\nstderr {err}",
        stdout(out)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn good_files() -> HashMap<String, Vec<u8>> {
    let (bg, ev) = standard();
    HashMap::from([
        ("images_background.zip".to_string(), bg.clone()),
        ("images_evaluation.zip".to_string(), ev.clone()),
    ])
}

#[test]
fn fetch_resumes_a_cut_download_checks_it_and_data_check_reads_it() {
    let dir = scratch("resume");
    let (bg, ev) = standard();
    let server = serve(good_files(), Some("images_background.zip"));
    let md5s = format!("{},{}", md5_hex(bg), md5_hex(ev));
    let args = ["data", "fetch", "omniglot", "--to", "omniglot"];

    let first = metaloop(&dir, &server.url, Some(&md5s), &args);
    let line = bad_input(&first);
    assert!(
        line.contains("interrupted") && line.contains("resume"),
        "{line}"
    );
    let root = dir.join("omniglot");
    assert_eq!(files_in(&root), [".images_background.zip.part"]);
    let partial = std::fs::metadata(root.join(".images_background.zip.part"))
        .unwrap()
        .len();
    assert!(partial > 0 && (partial as usize) < bg.len());

    let second = metaloop(&dir, &server.url, Some(&md5s), &args);
    let text = stdout(&second);
    assert!(
        second.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        files_in(&root),
        ["images_background.zip", "images_evaluation.zip"]
    );
    assert_eq!(
        &std::fs::read(root.join("images_background.zip")).unwrap(),
        bg
    );
    assert_eq!(
        &std::fs::read(root.join("images_evaluation.zip")).unwrap(),
        ev
    );
    assert!(
        text.contains("30 alphabets, 964 characters, 19280 drawings"),
        "{text}"
    );
    assert!(
        text.contains("20 alphabets, 659 characters, 13180 drawings"),
        "{text}"
    );
    assert!(
        text.contains(&format!("MD5 {} (checked)", md5_hex(bg))),
        "{text}"
    );
    let requests = server.requests.lock().unwrap().clone();
    let resumed = format!("bytes={partial}-");
    assert!(
        requests
            .iter()
            .any(|(p, r)| p.ends_with("images_background.zip")
                && r.as_deref() == Some(resumed.as_str())),
        "no Range request from byte {partial}: {requests:?}"
    );

    // A third run finds both files present and checks them again without downloading.
    let before = server.requests.lock().unwrap().len();
    let third = metaloop(&dir, &server.url, Some(&md5s), &args);
    assert!(third.status.success());
    assert!(stdout(&third).contains("present"));
    assert_eq!(server.requests.lock().unwrap().len(), before);

    // `data check` loads them with the training loader.
    let check = metaloop(
        &dir,
        &server.url,
        None,
        &["data", "check", "omniglot", "omniglot"],
    );
    let text = stdout(&check);
    assert!(
        check.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(text.contains("32460 images"), "{text}");
    assert!(
        text.contains("train: 4400 classes") && text.contains("val: 400 classes"),
        "{text}"
    );
    assert!(text.contains("test: 1692 classes"), "{text}");
    assert!(
        text.contains(
            "images_background: 30 alphabets, 964 characters, drawings per character {20}"
        ),
        "{text}"
    );
    assert!(text.contains("the standard Omniglot"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_structure_keeps_nothing() {
    let dir = scratch("structure");
    let mut files = good_files();
    files.insert(
        "images_background.zip".into(),
        omniglot_zip("images_background", 29, 964),
    );
    let server = serve(files, None);
    let out = metaloop(
        &dir,
        &server.url,
        None,
        &["data", "fetch", "omniglot", "--to", "o"],
    );
    let line = bad_input(&out);
    assert!(
        line.contains("29 alphabets and 964 characters, expected 30 and 964"),
        "{line}"
    );
    assert!(line.contains("images_background.zip"), "{line}");
    assert!(
        files_in(&dir.join("o")).is_empty(),
        "{:?}",
        files_in(&dir.join("o"))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_entry_fails_the_zip_crc() {
    let dir = scratch("crc");
    let mut bg = standard().0.clone();
    // Flip a byte inside the first stored drawing (after its PNG signature).
    let at = bg.windows(4).position(|w| w == b"\x89PNG").unwrap() + 40;
    bg[at] ^= 0x55;
    let mut files = good_files();
    files.insert("images_background.zip".into(), bg);
    let server = serve(files, None);
    let out = metaloop(
        &dir,
        &server.url,
        None,
        &["data", "fetch", "omniglot", "--to", "o"],
    );
    let line = bad_input(&out);
    assert!(line.to_lowercase().contains("checksum"), "{line}");
    assert!(files_in(&dir.join("o")).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_md5_keeps_nothing() {
    let dir = scratch("md5");
    let server = serve(good_files(), None);
    let wrong = format!("{},{}", "0".repeat(32), md5_hex(&standard().1));
    let out = metaloop(
        &dir,
        &server.url,
        Some(&wrong),
        &["data", "fetch", "omniglot", "--to", "o"],
    );
    let line = bad_input(&out);
    assert!(
        line.contains(&format!("expected {}", "0".repeat(32))),
        "{line}"
    );
    assert!(files_in(&dir.join("o")).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreachable_server_is_one_line() {
    let dir = scratch("offline");
    // A port that was free a moment ago and has no listener now.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/python");
    let out = metaloop(
        &dir,
        &url,
        None,
        &["data", "fetch", "omniglot", "--to", "o"],
    );
    let line = bad_input(&out);
    assert!(
        line.contains("cannot download") && line.contains(&url),
        "{line}"
    );
    assert!(!dir.join("o").exists(), "the folder it made is removed");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A server that answers every GET with `head` and then `body_bytes` zeros (in 1 MiB writes),
/// and closes.
fn serve_oversized(head: &'static str, body_bytes: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/python", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            read_request(&stream);
            let _ = stream.write_all(head.as_bytes());
            let chunk = vec![0u8; 1 << 20];
            let mut sent = 0;
            while sent < body_bytes {
                if stream.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
        }
    });
    url
}

/// Fetches from `url` into a fresh scratch folder `o`: exit 2, one line holding every one of
/// `words` and "nothing kept", and no `o` left behind.
fn refused_and_nothing_kept(name: &str, url: &str, words: &[&str]) {
    let dir = scratch(name);
    let out = metaloop(&dir, url, None, &["data", "fetch", "omniglot", "--to", "o"]);
    let line = bad_input(&out);
    for w in words.iter().chain(&["nothing kept"]) {
        assert!(line.contains(w), "{w}: {line}");
    }
    assert!(
        !dir.join("o").exists(),
        "nothing written: {:?}",
        files_in(&dir.join("o"))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_server_announcing_100_gib_is_refused_before_writing() {
    let url = serve_oversized(
        "HTTP/1.1 200 OK\r\nContent-Length: 107374182400\r\nConnection: close\r\n\r\n",
        4 << 20,
    );
    refused_and_nothing_kept("announce", &url, &["107374182400", &url]);
}

#[test]
fn a_server_sending_without_end_is_cut_at_the_cap() {
    // No Content-Length: the body ends when the server closes, after 40 MiB here.
    let url = serve_oversized("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", 40 << 20);
    refused_and_nothing_kept("endless", &url, &["sent more than", &url]);
}
