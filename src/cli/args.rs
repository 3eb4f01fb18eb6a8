//! The command-line grammar (clap derive). Behaviour lives in `cli::commands`.

use crate::kms::keyspec::{
    EncryptionAlgorithm, KeyPairSpec, KeySpec, KeyUsage, MacAlgorithm, MessageType,
    SigningAlgorithm,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "kmsfs",
    version,
    about = "A local key management service with AWS KMS semantics",
    after_help = "Example:\n  kmsfs keystore init --root-key-file root.key\n  kmsfs key create --alias demo\n  echo hello | kmsfs encrypt --key alias/demo | kmsfs decrypt"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Key store directory [default: from the config file, else ~/.local/share/kmsfs/keystore]
    #[arg(long, global = true, env = "KMSFS_KEYSTORE", value_name = "DIR")]
    pub keystore: Option<PathBuf>,
    /// Configuration file [default: $KMSFS_CONFIG, else /etc/kmsfs/kmsfs.toml if present]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// File whose first line is the key store passphrase ($KMSFS_PASSPHRASE gives it directly)
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// File holding the 32-byte root key (raw or 64 hex digits), instead of a passphrase
    #[arg(long, global = true, env = "KMSFS_ROOT_KEY_FILE", value_name = "FILE")]
    pub root_key_file: Option<PathBuf>,
    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create or inspect the sealed key store
    #[command(subcommand)]
    Keystore(KeystoreCmd),
    /// Manage customer master keys (CMKs)
    #[command(subcommand)]
    Key(KeyCmd),
    /// Encrypt up to 4096 bytes under a CMK
    #[command(
        after_help = "Example:\n  echo secret | kmsfs encrypt --key alias/app --context app=web --base64"
    )]
    Encrypt(EncryptArgs),
    /// Decrypt a ciphertext blob (binary or base64); the blob names its key
    #[command(after_help = "Example:\n  kmsfs decrypt --in secret.blob --context app=web")]
    Decrypt(DecryptArgs),
    /// Re-encrypt a blob under another key, or the current version of its own
    #[command(
        name = "re-encrypt",
        after_help = "Example:\n  kmsfs re-encrypt --to alias/new --in old.blob --out new.blob"
    )]
    ReEncrypt(ReEncryptArgs),
    /// Generate a data key for envelope encryption (JSON output)
    #[command(
        name = "generate-data-key",
        after_help = "Example:\n  kmsfs generate-data-key --key alias/app --spec AES_256"
    )]
    GenerateDataKey(DataKeyArgs),
    /// Generate a key pair whose private key is encrypted under a symmetric CMK (JSON output)
    #[command(
        name = "generate-data-key-pair",
        after_help = "Example:\n  kmsfs generate-data-key-pair --key alias/app --spec ECC_NIST_P256"
    )]
    GenerateDataKeyPair(DataKeyPairArgs),
    /// Sign a message (or its digest) with an asymmetric SIGN_VERIFY key
    #[command(
        after_help = "Example:\n  kmsfs sign --key alias/signer --algorithm ECDSA_SHA_256 --in release.tar --out release.sig"
    )]
    Sign(SignArgs),
    /// Verify a signature made by an asymmetric key (exit 25 if it does not match)
    #[command(
        after_help = "Example:\n  kmsfs verify --key alias/signer --algorithm ECDSA_SHA_256 --in release.tar --signature release.sig"
    )]
    Verify(VerifyArgs),
    /// Export the public key of an RSA or ECC key (DER SubjectPublicKeyInfo, or PEM)
    #[command(
        name = "get-public-key",
        after_help = "Example:\n  kmsfs get-public-key alias/signer --pem --out signer.pem"
    )]
    GetPublicKey(PublicKeyArgs),
    /// Compute an HMAC with an HMAC key
    #[command(
        name = "generate-mac",
        after_help = "Example:\n  kmsfs generate-mac --key alias/tokens --algorithm HMAC_SHA_256 --in msg --base64"
    )]
    GenerateMac(MacArgs),
    /// Check an HMAC with an HMAC key (exit 26 if it does not match)
    #[command(
        name = "verify-mac",
        after_help = "Example:\n  kmsfs verify-mac --key alias/tokens --algorithm HMAC_SHA_256 --in msg --mac msg.mac"
    )]
    VerifyMac(VerifyMacArgs),
    /// Random bytes from the KMS
    #[command(after_help = "Example:\n  kmsfs random --bytes 32 --base64")]
    Random(RandomArgs),
    /// Show and verify the tamper-evident audit log
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Prepare an empty directory to hold an encrypted filesystem
    #[command(
        after_help = "Examples:\n  kmsfs init ~/secret.enc --key alias/home\n  kmsfs init /srv/data.enc --provider aws-kms --endpoint https://kms.eu-west-1.amazonaws.com \\\n      --region eu-west-1 --key arn:aws:kms:eu-west-1:111122223333:key/1234abcd-...\n  (credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials)"
    )]
    Init(InitFsArgs),
    /// Mount a cipher directory: plaintext at MOUNTPOINT, ciphertext in CIPHERDIR
    #[command(
        after_help = "Example:\n  kmsfs mount ~/secret.enc ~/secret\n  kmsfs umount ~/secret"
    )]
    Mount(MountArgs),
    /// Unmount a kmsfs mount
    #[command(after_help = "Example:\n  kmsfs umount ~/secret")]
    Umount(UmountArgs),
    /// Make new files under DIR (in a mount) use KEY; new subdirectories inherit it
    #[command(
        name = "set-key",
        after_help = "Example:\n  kmsfs set-key ~/secret/finance alias/finance"
    )]
    SetKey(SetKeyArgs),
    /// Re-wrap every file's data key (and directory and volume keys) under the current version
    /// of its CMK, or move them to another CMK; headers only, never data
    #[command(
        after_help = "Examples:\n  kmsfs rewrap ~/secret              (online, through the mount)\n  kmsfs rewrap ~/secret.enc --to alias/new   (offline, on the cipher directory)"
    )]
    Rewrap(RewrapArgs),
    /// Give files a fresh data key and re-encrypt their content (after a suspected data-key
    /// compromise), online and atomically per file
    #[command(after_help = "Example:\n  kmsfs reencrypt ~/secret/contracts/*.pdf")]
    Reencrypt(ReencryptArgs),
    /// Check every header, block, name and symlink of an unmounted cipher directory
    #[command(after_help = "Example:\n  kmsfs fsck ~/secret.enc --output json")]
    Fsck(FsckArgs),
    /// Show the running mounts: cipher dirs, keys in use (state, version), open files, caches,
    /// and the last audit events
    #[command(after_help = "Examples:\n  kmsfs status\n  kmsfs status --events 20 --output json")]
    Status(StatusArgs),
    /// Serve the AWS KMS JSON API (for the aws CLI, boto3 and other SDKs) on TCP and/or a
    /// Unix socket, until SIGINT/SIGTERM
    #[command(
        after_help = "Examples:\n  kmsfs serve --listen 127.0.0.1:4599 --credentials /etc/kmsfs/api-credentials.toml --verify-signatures\n  aws kms list-keys --endpoint-url http://127.0.0.1:4599\n\nThe credentials file maps access keys to local principals:\n  [[credential]]\n  access_key_id = \"AKIAKMSFSALICE\"\n  secret_access_key = \"...\"\n  principal = \"user:alice\"      # or uid:1000"
    )]
    Serve(ServeArgs),
    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  kmsfs completions bash > /etc/bash_completion.d/kmsfs\n  kmsfs completions zsh > \"${fpath[1]}/_kmsfs\"\n  kmsfs completions fish > ~/.config/fish/completions/kmsfs.fish"
    )]
    Completions { shell: clap_complete::Shell },
    /// Write man pages (kmsfs.1 and one per subcommand) into a directory
    #[command(
        after_help = "Example:\n  kmsfs man --dir /usr/local/share/man/man1 && man kmsfs-mount"
    )]
    Man {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TCP address to listen on, e.g. 127.0.0.1:4599 (repeatable; port 0 picks a free port)
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<std::net::SocketAddr>,
    /// Unix socket to listen on (also)
    #[arg(long, value_name = "PATH")]
    pub unix: Option<PathBuf>,
    /// TOML file of access keys and the principals they act as (mode 600)
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/kmsfs/api-credentials.toml"
    )]
    pub credentials: PathBuf,
    /// Check every request's SigV4 signature against the secret key (AccessDenied if wrong).
    /// This is the default; the flag says so explicitly
    #[arg(long, conflicts_with = "no_verify_signatures")]
    pub verify_signatures: bool,
    /// Trust the access key id of each request without checking its signature (tests only:
    /// anyone who reaches the listener can then act as any listed principal)
    #[arg(long)]
    pub no_verify_signatures: bool,
    /// A Host header value to accept besides the listeners' addresses, e.g. the name a TLS
    /// proxy forwards as (repeatable)
    #[arg(long = "host", value_name = "NAME[:PORT]")]
    pub hosts: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ReencryptArgs {
    /// Files in a kmsfs mount (directories: every file below them)
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// No progress display
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct FsckArgs {
    pub cipherdir: PathBuf,
    /// Remove orphan long-name side files, undo records and reencrypt temporaries, and move
    /// entries whose names do not decrypt into /lost+found under new names
    #[arg(long)]
    pub repair_names: bool,
    /// No progress display
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// How many of the latest audit events to show (0: none; needs the key store unlocked)
    #[arg(long, default_value_t = 5)]
    pub events: usize,
}

#[derive(Args, Debug)]
pub struct SetKeyArgs {
    pub dir: PathBuf,
    pub key: String,
}

#[derive(Args, Debug)]
pub struct RewrapArgs {
    /// A mount point (online) or an unmounted cipher directory (offline)
    pub path: PathBuf,
    /// Move the wrapping to this CMK [default: the current version of each header's own CMK]
    #[arg(long)]
    pub to: Option<String>,
    /// Only headers currently wrapped by this CMK
    #[arg(long)]
    pub key: Option<String>,
    /// No progress display
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct InitFsArgs {
    pub cipherdir: PathBuf,
    /// CMK that wraps the data keys of new files (with aws-kms: the service's key id, ARN or
    /// alias)
    #[arg(long)]
    pub key: String,
    /// Where the CMKs live: this host's key store, or an AWS-KMS-compatible service
    #[arg(long, value_enum, default_value_t = ProviderArg::Local)]
    pub provider: ProviderArg,
    /// The service's URL, e.g. https://kms.eu-west-1.amazonaws.com (aws-kms only)
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The service's region [default: $AWS_REGION or $AWS_DEFAULT_REGION] (aws-kms only)
    #[arg(long)]
    pub region: Option<String>,
    /// How long a key's state is trusted before the service is asked again: a key disabled at
    /// the service stops the mount within this many seconds (aws-kms only)
    #[arg(long, default_value_t = crate::aws::remote::DEFAULT_KEY_CACHE_SECONDS, value_name = "N")]
    pub key_cache_seconds: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderArg {
    #[value(name = "local")]
    Local,
    #[value(name = "aws-kms", alias = "aws_kms")]
    AwsKms,
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    pub cipherdir: PathBuf,
    pub mountpoint: PathBuf,
    /// Stay in the foreground (logs to standard error)
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Mount read-only
    #[arg(long)]
    pub read_only: bool,
    /// Let other users reach the mount (permissions still apply; non-root needs
    /// user_allow_other in /etc/fuse.conf)
    #[arg(long)]
    pub allow_other: bool,
    /// FUSE worker threads [default: from the config, else the number of CPUs]
    #[arg(long)]
    pub threads: Option<usize>,
    /// Kernel readahead for the mount in KiB, set when the daemon may (root); 0 keeps the
    /// kernel's default (128) [default: from the config, else 4096]
    #[arg(long, value_name = "KIB")]
    pub readahead_kib: Option<u32>,
    /// Requests over io_uring, one queue per CPU (Linux 6.14+): auto uses it when the fuse
    /// module's enable_uring is on; on turns that on (root) [default: from the config, else auto]
    #[arg(long, value_enum, value_name = "MODE")]
    pub io_uring: Option<crate::fs::mount::IoUringMode>,
    /// When the audit records of the mount's key uses are synced to disk (local key store):
    /// batched, about every 200 ms and before any fsync through the mount returns (a power loss
    /// may cost the last 200 ms of records, never those of data an application synced); each,
    /// before every key use returns (a disk sync per file created) [default: from the config,
    /// else batched]
    #[arg(long, value_enum, value_name = "WHEN")]
    pub audit_sync: Option<crate::fs::mount::AuditSync>,
    /// Data keys kept (at most 5 minutes, wiped on any key store change) so files reopen
    /// without a KMS Decrypt, and without its audit record; 0 asks the KMS on every open
    /// [default: from the config, else 16384]
    #[arg(long, value_name = "ENTRIES")]
    pub data_key_cache: Option<usize>,
    /// A file opened for writing while no other descriptor has it open bypasses the kernel's
    /// page cache, with every descriptor opened beside it: writes skip a copy and leave no
    /// plaintext there, reads through those descriptors are not cached. Needs Linux 6.6+ (else
    /// off) [default: from the config, else on]
    #[arg(long, value_name = "on|off", value_parser = clap::builder::BoolishValueParser::new())]
    pub direct_writes: Option<bool>,
    /// A file's pages in the kernel's page cache survive its next open while its backing file
    /// is unchanged (same inode, size, mtime and ctime); off drops them at every open, for
    /// cipher directories that something changes behind the mount where those cannot show it
    /// (a file server whose clock disagrees with this host's, a filesystem that keeps no
    /// ctime) [default: from the config, else on]
    #[arg(long, value_name = "on|off", value_parser = clap::builder::BoolishValueParser::new())]
    pub keep_cache: Option<bool>,
    /// Append the daemon's log to FILE [default: syslog when daemonized]
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Programs on the mount may not be executed
    #[arg(long)]
    pub noexec: bool,
    /// Have the kernel check modes and owners even on a root mount without --allow-other
    /// (they are always checked otherwise; root usually passes them anyway)
    #[arg(long)]
    pub default_permissions: bool,
    /// Unmount after this long without access and with no open files (e.g. 15m, 1h)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle: Option<std::time::Duration>,
    /// Internal: set by `kmsfs mount` for the daemon it starts.
    #[arg(long, hide = true)]
    pub daemon_child: bool,
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    pub mountpoint: PathBuf,
    /// Detach now, finish when no longer busy
    #[arg(long, short = 'z')]
    pub lazy: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeystoreCmd {
    /// Create a key store, unlocked by a passphrase or a root key file
    #[command(
        after_help = "Examples:\n  kmsfs random --bytes 32 > root.key   (needs a store; or: head -c32 /dev/urandom > root.key)\n  kmsfs keystore init --root-key-file root.key\n  KMSFS_PASSPHRASE=... kmsfs keystore init"
    )]
    Init(InitArgs),
    /// Show the key store's location and format (no passphrase needed)
    #[command(after_help = "Example:\n  kmsfs keystore info --output json")]
    Info,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Argon2id memory cost in KiB (passphrase stores)
    #[arg(long, value_name = "KIB")]
    pub kdf_memory_kib: Option<u32>,
    /// Argon2id iterations (passphrase stores)
    #[arg(long, value_name = "N")]
    pub kdf_iterations: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Create a CMK and print its id
    #[command(
        after_help = "Examples:\n  kmsfs key create --alias finance --description \"finance share\"\n  kmsfs key create --origin external   (then: kmsfs key import KEY --material-file F)"
    )]
    Create(CreateArgs),
    /// List CMKs
    #[command(after_help = "Example:\n  kmsfs key list --output json")]
    List,
    /// Show a key's state, origin, dates, versions, rotation, aliases and tags
    #[command(after_help = "Example:\n  kmsfs key describe alias/finance --output json")]
    Describe(KeyArg),
    /// Enable a key
    #[command(after_help = "Example:\n  kmsfs key enable alias/finance")]
    Enable(KeyArg),
    /// Disable a key: it stops encrypting and decrypting until enabled
    #[command(
        after_help = "Example:\n  kmsfs key disable alias/finance   (mounted files under it become unreadable at once)"
    )]
    Disable(KeyArg),
    /// Rotate now: new key material becomes current; older versions keep decrypting
    #[command(after_help = "Example:\n  kmsfs key rotate alias/finance && kmsfs rewrap ~/finance")]
    Rotate(KeyArg),
    /// Automatic rotation settings
    #[command(subcommand)]
    Rotation(RotationCmd),
    /// List a key's material versions with dates
    #[command(after_help = "Example:\n  kmsfs key rotations alias/finance")]
    Rotations(KeyArg),
    /// Schedule deletion after a waiting period of 7 to 30 days
    #[command(
        name = "schedule-deletion",
        after_help = "Example:\n  kmsfs key schedule-deletion alias/old --days 7"
    )]
    ScheduleDeletion(ScheduleDeletionArgs),
    /// Cancel a scheduled deletion; the key becomes Disabled
    #[command(name = "cancel-deletion")]
    #[command(
        after_help = "Example:\n  kmsfs key cancel-deletion alias/old && kmsfs key enable alias/old"
    )]
    CancelDeletion(KeyArg),
    /// Import 256-bit key material into a key created with --origin external
    #[command(
        after_help = "Example:\n  head -c 32 /dev/urandom > material.bin && kmsfs key import KEY --material-file material.bin"
    )]
    Import(ImportArgs),
    /// Manage aliases
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Add or replace tags: KEY k=v...
    #[command(after_help = "Example:\n  kmsfs key tag alias/finance team=ledger env=prod")]
    Tag(TagArgs),
    /// Remove tags: KEY k...
    #[command(after_help = "Example:\n  kmsfs key untag alias/finance env")]
    Untag(UntagArgs),
    /// List a key's tags
    #[command(after_help = "Example:\n  kmsfs key tags alias/finance --output json")]
    Tags(KeyArg),
    /// Get, put or explain the key policy
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Count the files and directories of a cipher directory per CMK and version
    #[command(
        name = "versions-in-use",
        after_help = "Example:\n  kmsfs key versions-in-use ~/secret.enc"
    )]
    VersionsInUse { cipherdir: PathBuf },
    /// Make versions below N unusable for decryption; refused while a known cipher directory
    /// still uses them (re-wrap first)
    #[command(
        name = "retire-version",
        after_help = "Example:\n  kmsfs key retire-version alias/app --below 3"
    )]
    RetireVersion {
        key: String,
        #[arg(long)]
        below: u32,
    },
    /// Apply due automatic rotations and scheduled deletions now (mounts do this every minute;
    /// config/systemd/kmsfs-maintenance.timer does it for stores without a mount)
    #[command(after_help = "Example:\n  kmsfs key maintain")]
    Maintain,
}

#[derive(Args, Debug)]
pub struct KeyArg {
    /// Key id, kmsfs:key/<id>, or alias/NAME
    pub key: String,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Alias for the new key (alias/ prefix optional)
    #[arg(long)]
    pub alias: Option<String>,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Key policy JSON file [default: root and you may do everything]
    #[arg(long, value_name = "FILE")]
    pub policy_file: Option<PathBuf>,
    /// Create even if the policy would lock you out of changing it
    #[arg(long)]
    pub bypass_lockout_check: bool,
    /// aws_kms: kmsfs makes the material; external: you import it
    #[arg(long, value_enum, default_value_t = OriginArg::AwsKms)]
    pub origin: OriginArg,
    /// Tags, key=value (repeatable)
    #[arg(long = "tag", value_name = "K=V")]
    pub tags: Vec<String>,
    /// SYMMETRIC_DEFAULT, RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384,
    /// HMAC_224, HMAC_256, HMAC_384 or HMAC_512
    #[arg(long, value_parser = KeySpec::parse, default_value = "SYMMETRIC_DEFAULT")]
    pub spec: KeySpec,
    /// ENCRYPT_DECRYPT, SIGN_VERIFY or GENERATE_VERIFY_MAC [default: the spec's only usage;
    /// ENCRYPT_DECRYPT for RSA]
    #[arg(long, value_parser = KeyUsage::parse)]
    pub usage: Option<KeyUsage>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginArg {
    #[value(name = "aws_kms", alias = "AWS_KMS", alias = "aws-kms")]
    AwsKms,
    #[value(name = "external", alias = "EXTERNAL")]
    External,
}

#[derive(Subcommand, Debug)]
pub enum RotationCmd {
    /// Rotate automatically every N days (1 to 2560; AWS allows 90 to 2560)
    #[command(after_help = "Example:\n  kmsfs key rotation enable alias/app --period-days 90")]
    Enable(RotationEnableArgs),
    /// Stop automatic rotation
    #[command(after_help = "Example:\n  kmsfs key rotation disable alias/finance")]
    Disable(KeyArg),
    /// Show automatic rotation settings
    #[command(after_help = "Example:\n  kmsfs key rotation status alias/finance")]
    Status(KeyArg),
}

#[derive(Args, Debug)]
pub struct RotationEnableArgs {
    pub key: String,
    #[arg(long, value_name = "N")]
    pub period_days: Option<u32>,
}

#[derive(Args, Debug)]
pub struct ScheduleDeletionArgs {
    pub key: String,
    /// Waiting period, 7 to 30 days
    #[arg(long, default_value_t = 30)]
    pub days: u32,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    pub key: String,
    /// File with exactly 32 bytes of key material
    #[arg(long, value_name = "FILE")]
    pub material_file: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum AliasCmd {
    /// Point a new alias at a key
    #[command(after_help = "Example:\n  kmsfs key alias create finance 1234abcd-...")]
    Create { alias: String, key: String },
    /// Delete an alias (the key stays)
    #[command(after_help = "Example:\n  kmsfs key alias delete alias/old-name")]
    Delete { alias: String },
    /// List aliases, of one key or all
    #[command(after_help = "Example:\n  kmsfs key alias list --key alias/finance")]
    List {
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct TagArgs {
    pub key: String,
    /// key=value pairs
    #[arg(required = true, value_name = "K=V")]
    pub tags: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UntagArgs {
    pub key: String,
    #[arg(required = true, value_name = "K")]
    pub tag_keys: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Print the key policy
    #[command(after_help = "Example:\n  kmsfs key policy get alias/finance > policy.json")]
    Get(KeyArg),
    /// Replace the key policy with a JSON file
    #[command(after_help = "Example:\n  kmsfs key policy put alias/app --file policy.json")]
    Put(PolicyPutArgs),
    /// Say whether a principal may do an action, and which statement decides
    #[command(
        after_help = "Example:\n  kmsfs key policy explain alias/app --action kms:Decrypt --as uid:1000"
    )]
    Explain(ExplainArgs),
}

#[derive(Args, Debug)]
pub struct PolicyPutArgs {
    pub key: String,
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    #[arg(long)]
    pub bypass_lockout_check: bool,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    pub key: String,
    #[arg(long)]
    pub action: String,
    /// uid:N or user:NAME
    #[arg(long = "as", value_name = "PRINCIPAL")]
    pub principal: String,
    /// Encryption context of the request, key=value (repeatable)
    #[arg(long = "context", value_name = "K=V")]
    pub context: Vec<String>,
}

#[derive(Args, Debug)]
pub struct IoArgs {
    /// Read input from FILE instead of standard input
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Write output to FILE instead of standard output
    #[arg(long = "out", value_name = "FILE")]
    pub output_file: Option<PathBuf>,
    /// Write output as base64 text instead of raw bytes
    #[arg(long)]
    pub base64: bool,
}

#[derive(Args, Debug)]
pub struct EncryptArgs {
    #[arg(long)]
    pub key: String,
    /// SYMMETRIC_DEFAULT, or RSAES_OAEP_SHA_1 / RSAES_OAEP_SHA_256 for RSA keys
    #[arg(long, value_parser = EncryptionAlgorithm::parse)]
    pub algorithm: Option<EncryptionAlgorithm>,
    /// Encryption context, key=value (repeatable); decrypt needs the same
    #[arg(long = "context", value_name = "K=V")]
    pub context: Vec<String>,
    #[command(flatten)]
    pub io: IoArgs,
}

#[derive(Args, Debug)]
pub struct DecryptArgs {
    /// Refuse a blob made under any other key (IncorrectKeyException); required for RSA
    #[arg(long)]
    pub key: Option<String>,
    /// SYMMETRIC_DEFAULT, or RSAES_OAEP_SHA_1 / RSAES_OAEP_SHA_256 for RSA keys
    #[arg(long, value_parser = EncryptionAlgorithm::parse, requires = "key")]
    pub algorithm: Option<EncryptionAlgorithm>,
    #[arg(long = "context", value_name = "K=V")]
    pub context: Vec<String>,
    #[command(flatten)]
    pub io: IoArgs,
}

#[derive(Args, Debug)]
pub struct ReEncryptArgs {
    /// Destination key (may be the blob's own key, for its current version)
    #[arg(long)]
    pub to: String,
    /// Encryption context the blob was made with
    #[arg(long = "context", value_name = "K=V")]
    pub context: Vec<String>,
    /// Context for the new blob [default: the same as --context]
    #[arg(long = "to-context", value_name = "K=V")]
    pub to_context: Option<Vec<String>>,
    /// The RSA key the input was encrypted under (needed with --source-algorithm)
    #[arg(long, requires = "source_algorithm")]
    pub source_key: Option<String>,
    /// RSAES_OAEP_SHA_1 / RSAES_OAEP_SHA_256 when the input is RSA ciphertext
    #[arg(long, value_parser = EncryptionAlgorithm::parse, requires = "source_key")]
    pub source_algorithm: Option<EncryptionAlgorithm>,
    /// RSAES_OAEP_SHA_1 / RSAES_OAEP_SHA_256 when --to is an RSA key
    #[arg(long, value_parser = EncryptionAlgorithm::parse)]
    pub to_algorithm: Option<EncryptionAlgorithm>,
    #[command(flatten)]
    pub io: IoArgs,
}

#[derive(Args, Debug)]
pub struct DataKeyArgs {
    #[arg(long)]
    pub key: String,
    /// Key length in bytes (1 to 1024)
    #[arg(long, conflicts_with = "spec")]
    pub bytes: Option<usize>,
    /// AES_256 (32 bytes, the default) or AES_128 (16 bytes)
    #[arg(long, value_enum)]
    pub spec: Option<KeySpecArg>,
    #[arg(long = "context", value_name = "K=V")]
    pub context: Vec<String>,
    /// Return only the encrypted data key
    #[arg(long)]
    pub without_plaintext: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpecArg {
    #[value(name = "AES_256")]
    Aes256,
    #[value(name = "AES_128")]
    Aes128,
}

#[derive(Args, Debug)]
pub struct DataKeyPairArgs {
    /// The symmetric CMK that encrypts the private key
    #[arg(long)]
    pub key: String,
    /// RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256 or ECC_NIST_P384
    #[arg(long, value_parser = KeyPairSpec::parse)]
    pub spec: KeyPairSpec,
    #[arg(long = "context", value_name = "K=V")]
    pub context: Vec<String>,
    /// Return only the encrypted private key (and the public key)
    #[arg(long)]
    pub without_plaintext: bool,
}

#[derive(Args, Debug)]
pub struct SignArgs {
    #[arg(long)]
    pub key: String,
    /// RSASSA_PSS_SHA_256/384/512, RSASSA_PKCS1_V1_5_SHA_256/384/512, ECDSA_SHA_256 (P-256),
    /// ECDSA_SHA_384 (P-384)
    #[arg(long, value_parser = SigningAlgorithm::parse)]
    pub algorithm: SigningAlgorithm,
    /// RAW (up to 4096 bytes, hashed here) or DIGEST (already hashed; not hashed again)
    #[arg(long, value_parser = MessageType::parse, default_value = "RAW")]
    pub message_type: MessageType,
    #[command(flatten)]
    pub io: IoArgs,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub sign: SignArgs,
    /// File holding the signature, raw or base64
    #[arg(long, value_name = "FILE")]
    pub signature: PathBuf,
}

#[derive(Args, Debug)]
pub struct PublicKeyArgs {
    pub key: String,
    /// PEM ("PUBLIC KEY") instead of DER
    #[arg(long)]
    pub pem: bool,
    #[arg(long = "out", value_name = "FILE")]
    pub output_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct MacArgs {
    #[arg(long)]
    pub key: String,
    /// HMAC_SHA_224, HMAC_SHA_256, HMAC_SHA_384 or HMAC_SHA_512 (matching the key's spec)
    #[arg(long, value_parser = MacAlgorithm::parse)]
    pub algorithm: MacAlgorithm,
    #[command(flatten)]
    pub io: IoArgs,
}

#[derive(Args, Debug)]
pub struct VerifyMacArgs {
    #[command(flatten)]
    pub mac_args: MacArgs,
    /// File holding the MAC, raw or base64
    #[arg(long, value_name = "FILE")]
    pub mac: PathBuf,
}

#[derive(Args, Debug)]
pub struct RandomArgs {
    /// Number of bytes (1 to 1024)
    #[arg(long)]
    pub bytes: usize,
    #[arg(long = "out", value_name = "FILE")]
    pub output_file: Option<PathBuf>,
    #[arg(long)]
    pub base64: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check the hash chain; exits non-zero naming the first bad line
    #[command(after_help = "Example:\n  kmsfs audit verify")]
    Verify,
    /// Show audit records, oldest first
    #[command(after_help = "Example:\n  kmsfs audit show --key alias/app --since 2026-01-01")]
    Show(AuditShowArgs),
}

#[derive(Args, Debug)]
pub struct AuditShowArgs {
    /// Only records of this key
    #[arg(long)]
    pub key: Option<String>,
    /// Only records at or after this time (RFC 3339, YYYY-MM-DD or @unix)
    #[arg(long)]
    pub since: Option<String>,
    /// Only this operation (e.g. Decrypt)
    #[arg(long)]
    pub operation: Option<String>,
    /// At most the last N matching records
    #[arg(long)]
    pub limit: Option<usize>,
}
