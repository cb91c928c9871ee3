"""The text corpus of the Zendesk sandbox: organizations, people, ticket subjects and the messages its agents
and customers write.

Plain data, no behaviour: sandbox/zendesk.py draws from these tuples with its seeded `random.Random`, so the
ORDER of every tuple is part of the sandbox's determinism (same seed, same account). Append or edit text freely,
but know that reordering or resizing a tuple changes which tickets a given seed produces.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Org:
    """A customer organization; `weight` is its share of tickets (and of its end users)."""

    id: int
    name: str
    domain: str
    segment: str
    weight: int


ORGS = (
    Org(362000000011, "Northwind Logistics", "northwind-logistics.example", "enterprise", 6),
    Org(362000000012, "Globex Retail Group", "globex-retail.example", "enterprise", 5),
    Org(362000000013, "Umbrella Health Partners", "umbrella-health.example", "enterprise", 4),
    Org(362000000014, "Initech Payroll", "initech-payroll.example", "mid_market", 4),
    Org(362000000015, "Hooli Analytics", "hooli-analytics.example", "mid_market", 3),
    Org(362000000016, "Stark Fabrication", "stark-fab.example", "mid_market", 3),
    Org(362000000017, "Pied Piper Storage", "piedpiper-storage.example", "smb", 2),
    Org(362000000018, "Vandelay Imports", "vandelay-imports.example", "smb", 2),
)

# (tier, name): the tier is the group (L1..L4) the agent works in, in sandbox/zendesk.py's GROUPS.
AGENTS = (
    ("L1", "Maya Lindqvist"),
    ("L1", "Tomás Okafor"),
    ("L1", "Priya Raman"),
    ("L1", "Jonas Weber"),
    ("L2", "Chloé Martin"),
    ("L2", "Daniel Park"),
    ("L2", "Amara Nwosu"),
    ("L3", "Felix Brandt"),
    ("L3", "Sofia Costa"),
    ("L4", "Hiroshi Tanaka"),
)

FIRST_NAMES = (
    "Alex",
    "Jordan",
    "Sam",
    "Taylor",
    "Morgan",
    "Casey",
    "Riley",
    "Jamie",
    "Avery",
    "Quinn",
    "Robin",
    "Drew",
    "Elena",
    "Marcus",
    "Aisha",
    "Lena",
    "Victor",
    "Nadia",
    "Oskar",
    "Ines",
)
LAST_NAMES = (
    "Fischer",
    "Nguyen",
    "Garcia",
    "Kowalski",
    "Haddad",
    "Johansson",
    "Moreau",
    "Silva",
    "Murphy",
    "Rossi",
    "Schmidt",
    "Kim",
    "Dubois",
    "Novak",
    "Andersen",
    "Costa",
)

# (product area, ticket type, subject, description)
PROBLEMS = (
    (
        "area_sso_login",
        "incident",
        "SSO login fails with 'Invalid SAML response' after IdP certificate rotation",
        "Since we rotated the signing certificate in Okta this morning, every user gets 'Invalid SAML response: "
        "signature validation failed' when logging in. Password login is disabled for our account, so nobody can "
        "get in. We uploaded the new certificate under Security > SSO but it made no difference.",
    ),
    (
        "area_sso_login",
        "question",
        "How do we enforce 2FA for contractors only?",
        "We'd like to require two-factor authentication for our contractor accounts but not for staff who log in "
        "through SSO. Is there a way to scope the 2FA policy to a user group?",
    ),
    (
        "area_sso_login",
        "incident",
        "Users logged out every 10 minutes since yesterday",
        "Since yesterday afternoon our agents are being logged out roughly every ten minutes, mid-task. Session "
        "timeout in our settings is 8 hours. It happens in Chrome and Edge, on office and home networks.",
    ),
    (
        "area_billing",
        "question",
        "Invoice shows 140 seats but we only have 112 active users",
        "Our November invoice (INV-2026-11-0481) charges for 140 seats. The admin console shows 112 active users "
        "and 9 deactivated ones. Can you explain the difference and issue a corrected invoice?",
    ),
    (
        "area_billing",
        "incident",
        "Card payment declined although the card is valid",
        "Our renewal payment was declined twice with 'do_not_honor'. Our bank says they never saw the "
        "authorisation request. The account now shows a past-due banner to all our users.",
    ),
    (
        "area_billing",
        "question",
        "Change billing contact and VAT number",
        "Please update our billing contact to finance@ our domain and add our new VAT number to future invoices. "
        "The old contact has left the company.",
    ),
    (
        "area_api",
        "incident",
        "API returns 502 on /v2/orders for large date ranges",
        "Calls to GET /v2/orders with a date range over 30 days now fail with 502 Bad Gateway after about 60 "
        "seconds. Shorter ranges work. This broke our nightly reconciliation job two nights in a row.",
    ),
    (
        "area_api",
        "problem",
        "Webhooks delivered twice for the same event",
        "We are receiving every order.updated webhook twice, a few seconds apart, with the same event id. Our "
        "consumer is idempotent but the duplicates are triggering double notifications to our customers.",
    ),
    (
        "area_api",
        "question",
        "Rate limit headers missing on bulk endpoints",
        "The bulk import endpoint does not return the X-RateLimit headers, so our client can't pace itself and "
        "keeps getting 429s. Is there a documented limit for bulk calls?",
    ),
    (
        "area_api",
        "incident",
        "OAuth token refresh returns invalid_grant for all integrations",
        "Starting around 06:40 UTC all of our OAuth integrations fail to refresh their tokens with "
        "'invalid_grant'. Re-authorising one of them manually worked, but we have 40 of them.",
    ),
    (
        "area_data_sync",
        "incident",
        "CRM sync stuck at 'Pending' for 3 days",
        "The Salesforce sync has shown 'Pending' since Monday. No new contacts have come through and the last "
        "successful run was 3 days ago. We haven't changed anything on the Salesforce side.",
    ),
    (
        "area_data_sync",
        "problem",
        "Duplicate contacts created on every sync run",
        "Each sync run creates a fresh copy of contacts whose email has uppercase letters. We now have over 2,000 "
        "duplicates and our sales team is contacting the same people twice.",
    ),
    (
        "area_data_sync",
        "incident",
        "Deleted records reappear after nightly import",
        "Records we delete during the day are back the next morning after the nightly import. It looks like the "
        "import ignores the deletion flag.",
    ),
    (
        "area_reporting",
        "incident",
        "Dashboard widgets show 'Query timed out'",
        "Since this morning most widgets on our executive dashboard show 'Query timed out'. The board meeting is "
        "tomorrow and we need these figures.",
    ),
    (
        "area_reporting",
        "question",
        "Scheduled report emails not arriving",
        "Our weekly scheduled report stopped arriving two weeks ago. It's still listed as active and the "
        "recipients haven't changed. Nothing in our spam folders either.",
    ),
    (
        "area_reporting",
        "problem",
        "CSV export cuts off at 65,536 rows",
        "When exporting the activity report to CSV, the file always ends at row 65,536 even though the report "
        "shows about 90,000 rows. We need the full export for our auditors.",
    ),
    (
        "area_mobile_app",
        "incident",
        "iOS app crashes on launch after update 7.4.0",
        "After updating to 7.4.0, the iOS app crashes immediately on launch for about half of our field team "
        "(iPhone 12 and 13, iOS 18). Reinstalling doesn't help. Android is fine.",
    ),
    (
        "area_mobile_app",
        "question",
        "Offline mode not syncing photos",
        "Technicians capture photos while offline, but when they come back online the photos never upload. The "
        "text notes sync fine.",
    ),
    (
        "area_notifications",
        "incident",
        "SMS notifications not delivered to UK numbers",
        "Since yesterday none of our appointment reminders reach UK mobile numbers. The delivery log says 'sent' "
        "but customers get nothing. US numbers are fine.",
    ),
    (
        "area_notifications",
        "question",
        "Email notifications going to spam",
        "Our customers report that notification emails from your platform land in spam since last week. Did "
        "something change in the sending domain or DKIM setup?",
    ),
    (
        "area_integrations",
        "incident",
        "Slack integration posts to the wrong channel",
        "Alerts that should go to #ops-alerts are posted in #general since we reconnected the Slack app. The "
        "channel mapping in the integration settings still shows #ops-alerts.",
    ),
    (
        "area_integrations",
        "question",
        "Jira integration: map custom priority field",
        "We'd like issues created from your app to fill our custom 'Customer Impact' field in Jira. Is field "
        "mapping supported for custom fields, and how do we set it up?",
    ),
    (
        "area_integrations",
        "problem",
        "Zapier trigger fires with empty payload",
        "The 'New Invoice' Zapier trigger fires, but every field in the payload is empty. This started after "
        "we renamed two custom fields.",
    ),
    (
        "area_performance",
        "incident",
        "Search takes 30+ seconds for all users",
        "Global search has become unusable: every query takes 30 to 45 seconds, or fails. It was instant last "
        "week. Our account has about 1.2 million records.",
    ),
    (
        "area_performance",
        "incident",
        "Page loads extremely slow in EU region",
        "All pages take 10-15 seconds to load for our users in Frankfurt and Dublin. Colleagues in New York "
        "report normal speed. Started around 08:00 CET.",
    ),
    (
        "area_security",
        "question",
        "Request for SOC 2 Type II report and pen test summary",
        "Our security team needs your latest SOC 2 Type II report and the summary of your most recent "
        "penetration test for our annual vendor review, due at the end of the month.",
    ),
    (
        "area_security",
        "incident",
        "Suspicious API key activity from unknown IP range",
        "Our audit log shows API calls with one of our keys from an IP range in a country where we have no "
        "staff. We revoked the key, but we need to know what data was accessed.",
    ),
    (
        "area_permissions",
        "question",
        "Custom role can't see archived projects",
        "Users with our 'Project Lead' custom role cannot open archived projects even though the role has "
        "'View archived' enabled. Admins can see them.",
    ),
    (
        "area_permissions",
        "incident",
        "New hires can't be invited: 'seat limit reached'",
        "Inviting new users fails with 'seat limit reached', but we bought 25 extra seats last week and the "
        "subscription page shows them. We have six people starting on Monday.",
    ),
    (
        "area_data_import",
        "question",
        "Importing historical data from our old system",
        "We're migrating from our old ticketing tool and want to import five years of history. What format "
        "does the importer expect for attachments and timestamps?",
    ),
    (
        "area_data_import",
        "incident",
        "Import job failed at 43% with no error message",
        "Our bulk import of 80,000 records stopped at 43% and the job page just says 'Failed'. No error file "
        "was produced. We tried twice with the same result.",
    ),
)

AGENT_REPLIES = (
    "Thanks for the details. I've reproduced this on our side and I'm digging into the logs now. Could you "
    "confirm the exact time (with time zone) of the last failure?",
    "Thanks for reaching out. Could you send us a HAR file captured while the problem happens? Open the "
    "browser developer tools, go to Network, reproduce the issue, then save all as HAR.",
    "I've corrected a setting on your account that was causing this. Could you try again and let us know "
    "whether the problem persists?",
    "Could you share the request ID shown in the error banner (it starts with req_)? That lets us trace the "
    "call end to end.",
    "Thanks for your patience. We've confirmed this is a known issue affecting a small number of accounts, "
    "and I'll update you as soon as the fix is deployed.",
    "I've cleared the stuck jobs in your queue and re-triggered the run. Please check again in about 15 "
    "minutes and let me know what you see.",
    "As a workaround, splitting the request into smaller date ranges avoids the timeout. Could you try that "
    "while we work on a permanent fix?",
)
AGENT_FOLLOW_UPS = (
    "Just checking in: were you able to try the steps I suggested?",
    "Following up on my last message. Let us know if you still need help with this.",
)
SOLVE_REPLIES = (
    "Glad to hear it's working again! I'll mark this ticket as solved; just reply here if anything comes back.",
    "The fix has been deployed to all regions. I'm solving this ticket for now; reply anytime to reopen it.",
    "Since we haven't heard back, I'm marking this as solved. Replying to this email will reopen the ticket.",
)
INTERNAL_NOTES = (
    "Checked the account: plan limits are fine and there are no recent configuration changes in the audit log.",
    "Customer is still on legacy v1 API keys, which would explain the auth errors. Asked them to rotate.",
    "Reproduced on staging with the customer's file: it has a byte-order mark our parser rejects.",
    "Looked at the job logs: three retries, all failing on the same record. Sent details to the customer.",
)
ENGINEERING_NOTES = (
    "Looks like a regression from Tuesday's release of the sync worker. Needs engineering; linked to the bug.",
    "Stack trace points at the report renderer timing out on accounts with more than 50k rows. Needs a code fix.",
)
VENDOR_NOTES = (
    "This is on the SMS gateway's side: their status page shows degraded delivery to EU carriers. Waiting on "
    "the vendor's case.",
    "The payment processor rejects the whole card range. Opened a case with the processor; waiting for them.",
)
CUSTOMER_NUDGES = (
    "Any update on this? It's still happening for our team.",
    "Following up: this is blocking our month-end close.",
    "Is there an ETA? Several of our users are asking.",
    "We're still seeing this today. Anything else you need from us?",
)
CUSTOMER_ANSWERS = (
    "Here's the request ID you asked for: req_{n}. It failed again at 14:05 our time.",
    "I tried the workaround but it didn't help: same error.",
    "I've attached the HAR file. Let me know if you need anything else.",
    "Confirmed, we're on the latest version and the problem is still there.",
)
CUSTOMER_REOPENS = (
    "Unfortunately this started again this morning with the same error as before.",
    "The fix didn't stick: we're seeing the problem again since yesterday.",
)
# Customer messages that go with an escalation signal; keys are tags of sandbox/zendesk.py's SIGNAL_TAGS.
SIGNAL_MESSAGES: dict[str, tuple[str, ...]] = {
    "churn_risk": (
        "Honestly, this is the third outage this quarter. If it isn't resolved this week we'll be evaluating "
        "other vendors at renewal.",
        "Our renewal is next month and leadership is asking whether we should keep using you. We need this fixed.",
    ),
    "customer_requested_escalation": (
        "I'd like this escalated to a manager, please. We've been waiting far too long.",
        "Please escalate this ticket. It's impacting our whole support floor.",
    ),
    "public_complaint": (
        "We've posted about this on social media and in your community forum because we weren't getting answers.",
        "Several of our own customers are now complaining publicly about this.",
    ),
    "security_concern": (
        "One more thing: we noticed an admin login from an IP address we don't recognise around the same time. "
        "Could this be a security issue?",
    ),
}
