"""lapa_ros/ros_env.py: discovery on this machine only; with Fast DDS, the loopback UDP profile
without shared memory, unless the environment chose a range itself."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from lapa_ros.ros_env import DDS_PROFILE, FASTDDS_PROFILE_ENV, ros_env

NS = {"dds": "http://www.eprosima.com"}


def test_fast_dds_without_a_chosen_range_gets_the_loopback_udp_profile():
    env = ros_env(base={})
    assert env["ROS_DOMAIN_ID"] == "42"
    # LOCALHOST would make rmw_fastrtps install shared memory itself and ignore the profile
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SYSTEM_DEFAULT"
    assert env[FASTDDS_PROFILE_ENV] == str(DDS_PROFILE) and DDS_PROFILE.is_file()
    assert ros_env(7, base={"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"})[FASTDDS_PROFILE_ENV] == str(DDS_PROFILE)


def test_a_chosen_range_another_profile_or_another_middleware_is_kept():
    chosen = ros_env(base={"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"})
    assert chosen["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and FASTDDS_PROFILE_ENV not in chosen
    own = ros_env(base={FASTDDS_PROFILE_ENV: "/etc/my_profiles.xml"})
    assert own[FASTDDS_PROFILE_ENV] == "/etc/my_profiles.xml" and own["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    cyclone = ros_env(base={"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"})
    assert cyclone["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and FASTDDS_PROFILE_ENV not in cyclone


def test_the_profile_is_udp_on_loopback_only_and_the_default_participant():
    root = ET.parse(DDS_PROFILE).getroot()
    descriptors = root.findall(".//dds:transport_descriptor", NS)
    assert [d.findtext("dds:type", namespaces=NS) for d in descriptors] == ["UDPv4"]  # no SHM descriptor
    assert [a.text for a in descriptors[0].findall("dds:interfaceWhiteList/dds:address", NS)] == ["127.0.0.1"]
    participant = root.find(".//dds:participant", NS)
    assert participant.get("is_default_profile") == "true"
    rtps = participant.find("dds:rtps", NS)
    assert rtps.findtext("dds:useBuiltinTransports", namespaces=NS) == "false"  # the builtin SHM transport off
    assert rtps.findtext("dds:userTransports/dds:transport_id", namespaces=NS) == descriptors[0].findtext(
        "dds:transport_id", namespaces=NS)
    peers = rtps.findall("dds:builtin/dds:initialPeersList/dds:locator/dds:udpv4/dds:address", NS)
    assert [p.text for p in peers] == ["127.0.0.1"]
