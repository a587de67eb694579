"""Test helpers: exact frame builders, a TCP conversation scripter, and capture writers.

Layer: testing (pure Python, stdlib only; imports nothing from the rest of aiomb).
"""

from ._frames import DEFAULT_DST_MAC as DEFAULT_DST_MAC
from ._frames import DEFAULT_SRC_MAC as DEFAULT_SRC_MAC
from ._frames import TcpConversation as TcpConversation
from ._frames import ethernet_frame as ethernet_frame
from ._frames import icmp_frame as icmp_frame
from ._frames import internet_checksum as internet_checksum
from ._frames import ipv4_fragments as ipv4_fragments
from ._frames import ipv6_fragments as ipv6_fragments
from ._frames import sll2_frame as sll2_frame
from ._frames import sll_frame as sll_frame
from ._frames import tcp_frame as tcp_frame
from ._frames import tcp_options as tcp_options
from ._frames import udp_frame as udp_frame
from ._pcap import LINKTYPE_ETHERNET as LINKTYPE_ETHERNET
from ._pcap import LINKTYPE_LINUX_SLL as LINKTYPE_LINUX_SLL
from ._pcap import LINKTYPE_LINUX_SLL2 as LINKTYPE_LINUX_SLL2
from ._pcap import LINKTYPE_RAW as LINKTYPE_RAW
from ._pcap import gzip_file as gzip_file
from ._pcap import write_pcap as write_pcap
from ._pcap import write_pcapng as write_pcapng
